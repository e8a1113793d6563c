/**
 * The native accept path: for a route port that needs no JavaScript per connection, the addon
 * owns the listening socket, accepts on its relay threads, picks the backend from a copy of the
 * route held in native memory, connects without blocking and relays, so a connection never
 * becomes a `net.Socket` (docs/native-relay.md, "Native accept path").
 *
 * JavaScript keeps control: a table change goes to the addon in one call (`apply`: changed routes,
 * which also fences, as connections of a fenced backend or an older epoch are reset before it
 * returns; removed ports; new ports with their routes), it reads the counters at scrape time, and
 * hears about refused clients in batches. The router keeps no object per native port
 * (router/native-port-table.ts).
 */
import { isIP } from 'node:net';
import { getSystemErrorName } from 'node:util';
import {
  NATIVE_BACKEND_NUMBERS,
  NATIVE_BACKEND_STATE,
  NATIVE_ROUTE_HEADER,
  NATIVE_PORT_STAT_FIELDS,
  NATIVE_ROUTE_MODE,
  NativeAcceptEvent,
  loadNativeBindings,
  type NativeBindings,
  type NativeBudgetHandle,
  type NativeTlsRoute,
} from '../native-bindings';
import { DEFAULT_ROUTE_LIMITS, anyBackendTls, backendUsesTls, clientTls, type Backend, type Route } from '../protocol';

/** The counters the addon keeps per natively accepted port. */
export type NativePortStats = Record<(typeof NATIVE_PORT_STAT_FIELDS)[number], number>;

export type NativeAcceptEventKind = (typeof NativeAcceptEvent)[number];

/** Why a port's routes must stay on the JS path (shown per port in `/health`), or undefined. */
export function jsPathReason(routes: readonly Route[]): string | undefined {
  if (routes.length !== 1) return 'sni';
  return routeJsReason(routes[0]!);
}

/** `jsPathReason` of a port with this one route (no array per port when a table is diffed). */
export function routeJsReason(route: Route): string | undefined {
  if ((route.sni?.length ?? 0) > 0) return 'sni';
  if (route.proxyProtocol) return 'proxy-protocol';
  const backends = route.backends;
  // A passthrough route's start is checked in JS. Terminating routes and TLS towards backends are
  // served by the relay threads with OpenSSL (SF_NATIVE_TLS=off keeps both in JS; an addon built
  // before backend TLS keeps routes with TLS towards backends there).
  const toBackends = anyBackendTls(route);
  if (route.tls !== undefined || toBackends) {
    if (clientTls(route)?.mode === 'passthrough') return 'tls-passthrough';
    if (process.env.SF_NATIVE_TLS === 'off') return 'tls';
    if (toBackends && !nativeBackendTls()) return 'backend-tls';
  }
  // Names are resolved by Node, through a lookup that refuses the router's own addresses.
  // Scoped IPv6 addresses (fe80::1%eth0) are left to Node too: the addon parses plain addresses only.
  for (let i = 0; i < backends.length; i++) {
    const host = backends[i]!.host;
    if (isIP(host) === 0 || host.includes('%')) return 'host-name';
  }
  return undefined;
}

let backendTlsSupported: boolean | undefined;

/** True when the addon connects to backends over TLS itself. */
export function nativeBackendTls(): boolean {
  backendTlsSupported ??= loadNativeBindings()?.features?.includes('backend-tls') === true;
  return backendTlsSupported;
}

/** How native ports listen, and how long a client of a terminating route has for its preamble and handshake. */
export interface NativeCommitOptions {
  backlog: number;
  reusePort: boolean;
  keepAliveMs: number;
  handshakeTimeoutMs?: number;
  /** The fewest new ports one change steers to one listening socket (docs/native-relay.md). */
  steerMinPorts?: number;
}

/** The router's default ClientHello timeout (router-options.ts), when a caller gives none. */
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 5_000;

/** What hears of one router's natively accepted ports' refused clients (router/native-port-table.ts). */
export interface NativePortEvents {
  nativeEvent(kind: NativeAcceptEventKind, portId: number, port: number): void;
}

/** Acceptors by owner number, for the addon's one event queue (a process may run several routers). */
const acceptors = new Map<number, NativeAcceptor>();
let nextOwner = 1;
let eventsBound = false;
/** Natively accepted ports open or draining in this process: while any is, the process stays alive. */
let livePorts = 0;

function onEvents(flat: number[]): void {
  for (let i = 0; i + 3 < flat.length; i += 4) {
    const kind = NativeAcceptEvent[flat[i]!];
    if (kind) acceptors.get(flat[i + 1]!)?.event(kind, flat[i + 2]!, flat[i + 3]!);
  }
}

/** A table change for the addon, in the order it is applied (`NativeAcceptor.apply`). */
export interface NativeChange {
  /** Ports whose route changed, by id, with their new routes (fences are applied first). */
  changedIds: readonly number[];
  changedRoutes: readonly Route[];
  /** Ports that left the table (or moved to the JS path), by id: they stop accepting and drain. */
  retiredIds: readonly number[];
  /** New ports, each opened with its route. */
  opened: readonly Route[];
}

/**
 * Routes in the addon's flat form (`applyPorts` in native-bindings/index.ts). Nothing is allocated
 * per route: a 10,000-route table is three arrays and a string list, and each distinct backend
 * host travels once.
 */
function encodeRoutes(
  first: readonly Route[],
  second: readonly Route[],
  selfLoop: (b: Backend) => boolean,
): { header: Float64Array; ids: string[]; hosts: string[]; numbers: Float64Array } {
  let backends = 0;
  for (let r = 0; r < first.length; r++) backends += first[r]!.backends.length;
  for (let r = 0; r < second.length; r++) backends += second[r]!.backends.length;
  const header = new Float64Array((first.length + second.length) * NATIVE_ROUTE_HEADER);
  const ids = new Array<string>(backends);
  const hosts: string[] = [];
  const hostIndex = new Map<string, number>();
  const numbers = new Float64Array(backends * NATIVE_BACKEND_NUMBERS);
  const d = DEFAULT_ROUTE_LIMITS;
  let k = 0;
  const total = first.length + second.length;
  for (let r = 0; r < total; r++) {
    const route = r < first.length ? first[r]! : second[r - first.length]!;
    const h = r * NATIVE_ROUTE_HEADER;
    const maxConnections = route.maxConnections ?? d.maxConnections;
    header[h] = NATIVE_ROUTE_MODE[route.mode];
    header[h + 1] = route.connectTimeoutMs ?? d.connectTimeoutMs;
    header[h + 2] = route.idleTimeoutMs ?? d.idleTimeoutMs;
    header[h + 3] = route.drainTimeoutMs ?? d.drainTimeoutMs;
    header[h + 4] = Number.isFinite(maxConnections) ? maxConnections : -1;
    header[h + 5] = route.backends.length;
    for (let j = 0; j < route.backends.length; j++) {
      const b = route.backends[j]!;
      const x = k * NATIVE_BACKEND_NUMBERS;
      let host = hostIndex.get(b.host);
      if (host === undefined) {
        host = hosts.length;
        hosts.push(b.host);
        hostIndex.set(b.host, host);
      }
      ids[k] = b.id;
      numbers[x] = b.port;
      numbers[x + 1] = b.weight;
      numbers[x + 2] = b.epoch;
      numbers[x + 3] =
        b.state === 'active' && selfLoop(b) ? NATIVE_BACKEND_STATE.selfLoop : NATIVE_BACKEND_STATE[b.state];
      numbers[x + 4] = b.role === 'primary' ? 1 : 0;
      numbers[x + 5] = host;
      k++;
    }
  }
  return { header, ids, hosts, numbers };
}

/** TLS towards the route's backends, as router/backend-tls.ts connects on the JS path. */
function encodeBackendTls(route: Route): NativeTlsRoute['backend'] {
  const tls = clientTls(route);
  return {
    ...(tls?.backendCaFile ? { caFile: tls.backendCaFile } : {}),
    ...(tls?.backendCertFile && tls.backendKeyFile
      ? { certFile: tls.backendCertFile, keyFile: tls.backendKeyFile }
      : {}),
    ...(tls?.backendServerName ? { serverName: tls.backendServerName } : {}),
    postgres: tls?.startup === 'postgres',
    tls: route.backends.map((b) => backendUsesTls(route, b)),
  };
}

/** The TLS routes among `routes` (both lists, in order), for `applyPorts`. */
function encodeTls(first: readonly Route[], second: readonly Route[], handshakeTimeoutMs: number): NativeTlsRoute[] {
  const out: NativeTlsRoute[] = [];
  const total = first.length + second.length;
  for (let r = 0; r < total; r++) {
    const route = r < first.length ? first[r]! : second[r - first.length]!;
    const toBackends = anyBackendTls(route);
    if (route.tls === undefined && !toBackends) continue;
    const tls = clientTls(route);
    const terminate = tls?.mode === 'terminate';
    if (!terminate && !toBackends) continue;
    out.push({
      index: r,
      ...(terminate ? { certFile: tls.certFile!, keyFile: tls.keyFile! } : {}),
      ...(terminate && tls.clientCaFile ? { clientCaFile: tls.clientCaFile } : {}),
      minVersion: tls?.minVersion ?? 'TLSv1.2',
      // A PostgreSQL route offers `postgresql` (direct TLS negotiation needs it), as on the JS path.
      ...(tls?.alpn ? { alpn: tls.alpn } : tls?.startup === 'postgres' ? { alpn: ['postgresql'] } : {}),
      startup: tls?.startup ?? 'tls',
      policy: tls?.policy ?? 'required',
      handshakeTimeoutMs,
      ...(toBackends ? { backend: encodeBackendTls(route) } : {}),
    });
  }
  return out;
}

/** One router's view of the native accept path: its ports and its connection budget. */
export class NativeAcceptor {
  private readonly budgetHandle: NativeBudgetHandle;
  private readonly owner: number;
  /** Hears the events of this acceptor's ports (the router's native port table). */
  private readonly listeners = new Set<NativePortEvents>();

  constructor(private readonly bindings: NativeBindings) {
    if (!eventsBound) bindings.initEvents(onEvents);
    eventsBound = true;
    this.owner = nextOwner++;
    acceptors.set(this.owner, this);
    this.budgetHandle = bindings.createBudget(this.owner);
  }

  /** `events` hears of refused clients on this acceptor's ports (each checks the port is its own). */
  listen(events: NativePortEvents): void {
    this.listeners.add(events);
  }

  unlisten(events: NativePortEvents): void {
    this.listeners.delete(events);
  }

  /** @internal The addon reported a refused client on port `portId`. */
  event(kind: NativeAcceptEventKind, portId: number, port: number): void {
    for (const l of this.listeners) l.nativeEvent(kind, portId, port);
  }

  /**
   * Applies a table change in one call into the addon: changed routes first (connections of fenced
   * backends are reset before this returns), then retirements, then new ports, each listening with
   * its route in place before its first client. `selfLoop` marks backends that are the router
   * itself (never connected, counted). Returns the connections killed and per new port its id or
   * the system error (`code` EADDRINUSE...) that refused it; the other ports open regardless.
   */
  apply(
    host: string,
    change: NativeChange,
    options: NativeCommitOptions,
    selfLoop: (b: Backend) => boolean,
  ): { killed: number; opened: Array<number | NodeJS.ErrnoException> } {
    const bindHost = host === 'localhost' ? '127.0.0.1' : host;
    const routes = encodeRoutes(change.changedRoutes, change.opened, selfLoop);
    const ports = new Float64Array(change.opened.length);
    for (let i = 0; i < ports.length; i++) ports[i] = change.opened[i]!.port;
    const result = this.bindings.applyPorts(
      this.budgetHandle,
      bindHost,
      Float64Array.from(change.changedIds),
      Float64Array.from(change.retiredIds),
      ports,
      options.backlog,
      options.reusePort,
      options.keepAliveMs,
      routes.header,
      routes.ids,
      routes.hosts,
      routes.numbers,
      encodeTls(change.changedRoutes, change.opened, options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS),
      // Infinity (never) travels as the largest exact integer.
      options.steerMinPorts === undefined
        ? undefined
        : Math.min(Math.max(0, options.steerMinPorts), Number.MAX_SAFE_INTEGER),
    );
    const opened = new Array<number | NodeJS.ErrnoException>(ports.length);
    let live = 0;
    for (let i = 0; i < ports.length; i++) {
      const id = result[i + 1]!;
      if (id >= 0) {
        opened[i] = id;
        live++;
        continue;
      }
      const code = getSystemErrorName(id);
      const err: NodeJS.ErrnoException = new Error(`listen ${code} ${bindHost}:${ports[i]!}`);
      err.code = code;
      err.errno = id;
      err.syscall = 'listen';
      opened[i] = err;
    }
    this.portsLive(live);
    return { killed: result[0]!, opened };
  }

  /** Forgets the retired ports whose last connection is gone: 1 per such id, 0 while some remain. */
  release(ids: readonly number[]): Uint8Array {
    const released = this.bindings.releasePorts(Float64Array.from(ids));
    let gone = 0;
    for (let i = 0; i < released.length; i++) gone += released[i]!;
    this.portsLive(-gone);
    return released;
  }

  /** Why the port's certificate did not load, or undefined. */
  tlsError(id: number): string | undefined {
    return this.bindings.tlsError(id);
  }

  /** Why the port's last TLS start with a backend failed, or undefined. */
  backendTlsFailure(id: number): string | undefined {
    return this.bindings.backendTlsFailure?.(id);
  }

  killAll(id: number): number {
    return this.bindings.killAll(id);
  }

  stats(id: number): NativePortStats | undefined {
    const values = this.bindings.portStats(id);
    if (!values) return undefined;
    const out = {} as NativePortStats;
    NATIVE_PORT_STAT_FIELDS.forEach((f, i) => (out[f] = values[i] ?? 0));
    return out;
  }

  /** The counters of many ports in one call: NATIVE_PORT_STAT_FIELDS.length numbers per id, -1 if unknown. */
  statsMany(ids: readonly number[]): Float64Array {
    return this.bindings.portStatsMany(Float64Array.from(ids));
  }

  activeFor(id: number, backendId: string): number {
    return this.bindings.activeFor(id, backendId);
  }

  setServing(serving: boolean): void {
    this.bindings.setServing(this.budgetHandle, serving);
  }

  /** One router-wide budget for both paths (router/connection-budget.ts). */
  rebudget(limit: number, reserve: number, reservedBindings: number, jsReservedInUse: number): void {
    this.bindings.rebudget(this.budgetHandle, limit, reserve, reservedBindings, jsReservedInUse);
  }

  admit(ownActive: number, reserved: boolean): boolean {
    return this.bindings.admit(this.budgetHandle, ownActive, reserved);
  }

  released(ownActiveAfter: number, reserved: boolean): void {
    this.bindings.release(this.budgetHandle, ownActiveAfter, reserved);
  }

  /** Live connections across both paths, and clients refused by the router-wide limit. */
  budget(): { active: number; refusedGlobal: number } {
    const [active, refusedGlobal] = this.bindings.budgetStats(this.budgetHandle);
    return { active, refusedGlobal };
  }

  /** Natively accepted ports keep the process alive while any is open or draining, as a net.Server does. */
  private portsLive(delta: number): void {
    if (delta === 0) return;
    const before = livePorts;
    livePorts += delta;
    if (before === 0 && livePorts > 0) this.bindings.refPorts(true);
    else if (before > 0 && livePorts === 0) this.bindings.refPorts(false);
  }
}
