/**
 * The native accept path: for a route port that needs no JavaScript per connection, the addon
 * owns the listening socket, accepts on its relay threads, picks the backend from a copy of the
 * route held in native memory, connects without blocking and relays, so a connection never
 * becomes a `net.Socket` (docs/native-relay.md, "Native accept path").
 *
 * JavaScript keeps control: it opens a table's new ports in one call with their routes
 * (`openMany`), pushes changed routes in one call per table (`queueRoute`, then `flush`, which also
 * fences: connections of a fenced backend or an older epoch are reset before it returns), reads
 * the counters at scrape time, and hears about refused clients in batches.
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
  type NativeBindings,
  type NativeBudgetHandle,
} from '../native-bindings';
import { DEFAULT_ROUTE_LIMITS, type Backend, type Route } from '../protocol';

/** The counters the addon keeps per natively accepted port. */
export type NativePortStats = Record<(typeof NATIVE_PORT_STAT_FIELDS)[number], number>;

export type NativeAcceptEventKind = (typeof NativeAcceptEvent)[number];

/** What hears about a natively accepted port's refused clients (its route binding). */
export interface NativePortEvents {
  nativeEvent(kind: NativeAcceptEventKind): void;
}

/** Why a port's routes must stay on the JS path (shown per port in `/health`), or undefined. */
export function jsPathReason(routes: readonly Route[]): string | undefined {
  if (routes.length !== 1 || (routes[0]!.sni?.length ?? 0) > 0) return 'sni';
  const route = routes[0]!;
  if (route.proxyProtocol) return 'proxy-protocol';
  if (route.tls || route.backends.some((b) => b.tls === true)) return 'tls';
  // Names are resolved by Node, through a lookup that refuses the router's own addresses.
  // Scoped IPv6 addresses (fe80::1%eth0) are left to Node too: the addon parses plain addresses only.
  if (route.backends.some((b) => isIP(b.host) === 0 || b.host.includes('%'))) return 'host-name';
  return undefined;
}

/**
 * Event handlers by port id, for every acceptor of the process (the addon has one queue). A port
 * is here from its opening until it is released (retired and drained), and while any is, the
 * process stays alive, as it does for a listening net.Server and its sockets.
 */
const handlers = new Map<number, NativePortEvents>();

function portsChanged(bindings: NativeBindings, before: number): void {
  if (before === 0 && handlers.size > 0) bindings.refPorts(true);
  else if (before > 0 && handlers.size === 0) bindings.refPorts(false);
}
let eventsBound = false;

function onEvents(flat: number[]): void {
  for (let i = 0; i + 2 < flat.length; i += 3) {
    const kind = NativeAcceptEvent[flat[i]!];
    if (kind) handlers.get(flat[i + 1]!)?.nativeEvent(kind);
  }
}

/**
 * Routes in the addon's flat form (`setRoutes`, `openPorts` in native-bindings/index.ts). Nothing is
 * allocated per route: a 10,000-route table is four arrays.
 */
function encodeRoutes(
  entries: ReadonlyArray<{ route: Route; selfLoop?: (b: Backend) => boolean }>,
  sharedSelfLoop?: (b: Backend) => boolean,
): {
  header: Float64Array;
  ids: string[];
  hosts: string[];
  numbers: Float64Array;
} {
  let backends = 0;
  for (let r = 0; r < entries.length; r++) backends += entries[r]!.route.backends.length;
  const header = new Float64Array(entries.length * NATIVE_ROUTE_HEADER);
  const ids = new Array<string>(backends);
  const hosts = new Array<string>(backends);
  const numbers = new Float64Array(backends * NATIVE_BACKEND_NUMBERS);
  const d = DEFAULT_ROUTE_LIMITS;
  let k = 0;
  for (let r = 0; r < entries.length; r++) {
    const entry = entries[r]!;
    const route = entry.route;
    const selfLoop = (entry.selfLoop ?? sharedSelfLoop)!;
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
      ids[k] = b.id;
      hosts[k] = b.host;
      numbers[x] = b.port;
      numbers[x + 1] = b.weight;
      numbers[x + 2] = b.epoch;
      numbers[x + 3] =
        b.state === 'active' && selfLoop(b) ? NATIVE_BACKEND_STATE.selfLoop : NATIVE_BACKEND_STATE[b.state];
      numbers[x + 4] = b.role === 'primary' ? 1 : 0;
      k++;
    }
  }
  return { header, ids, hosts, numbers };
}

/** One router's view of the native accept path: its ports and its connection budget. */
export class NativeAcceptor {
  private readonly budgetHandle: NativeBudgetHandle;
  /** Routes waiting for `flush`: a table change pushes all of its ports' routes in one call. */
  private queue: Array<{ id: number; route: Route; selfLoop: (b: Backend) => boolean }> = [];

  constructor(private readonly bindings: NativeBindings) {
    if (!eventsBound) bindings.initEvents(onEvents);
    eventsBound = true;
    this.budgetHandle = bindings.createBudget();
  }

  /**
   * Listens on each port of `ports` in one call into the addon, each with its route in place before
   * the first client is accepted; `events` hears of the port's refused clients, and `selfLoop`
   * tells backends that are the router itself. Returns per port its id, or the system error
   * (`code` EADDRINUSE...) that refused it; the other ports are open regardless.
   */
  openMany(
    host: string,
    ports: ReadonlyArray<{ route: Route; events: NativePortEvents }>,
    options: { backlog: number; reusePort: boolean; keepAliveMs: number },
    selfLoop: (b: Backend) => boolean,
  ): Array<number | NodeJS.ErrnoException> {
    const bindHost = host === 'localhost' ? '127.0.0.1' : host;
    const routes = encodeRoutes(ports, selfLoop);
    const numbers = new Float64Array(ports.length);
    for (let i = 0; i < ports.length; i++) numbers[i] = ports[i]!.route.port;
    const ids = this.bindings.openPorts(
      this.budgetHandle,
      bindHost,
      numbers,
      options.backlog,
      options.reusePort,
      options.keepAliveMs,
      routes.header,
      routes.ids,
      routes.hosts,
      routes.numbers,
    );
    const out = new Array<number | NodeJS.ErrnoException>(ports.length);
    const before = handlers.size;
    for (let i = 0; i < ports.length; i++) {
      const id = ids[i]!;
      if (id >= 0) {
        handlers.set(id, ports[i]!.events);
        out[i] = id;
        continue;
      }
      const code = getSystemErrorName(id);
      const err: NodeJS.ErrnoException = new Error(`listen ${code} ${bindHost}:${ports[i]!.route.port}`);
      err.code = code;
      err.errno = id;
      err.syscall = 'listen';
      out[i] = err;
    }
    portsChanged(this.bindings, before);
    return out;
  }

  /**
   * Queues the port's route for the next `flush`, which pushes every queued route in one call.
   * `selfLoop` marks backends that are the router itself: never connected, counted.
   */
  queueRoute(id: number, route: Route, selfLoop: (b: Backend) => boolean): void {
    this.queue.push({ id, route, selfLoop });
  }

  /**
   * Pushes the queued routes to the addon, in order; connections of fenced backends are destroyed
   * (RST) before this returns. Returns how many.
   */
  flush(): number {
    const queue = this.queue;
    if (queue.length === 0) return 0;
    this.queue = [];
    const routes = encodeRoutes(queue);
    return this.bindings.setRoutes(
      Float64Array.from(queue, (q) => q.id),
      routes.header,
      routes.ids,
      routes.hosts,
      routes.numbers,
    );
  }

  /** Pushes the port's route now (and whatever was queued before it); returns connections fenced. */
  setRoute(id: number, route: Route, selfLoop: (b: Backend) => boolean): number {
    this.queueRoute(id, route, selfLoop);
    return this.flush();
  }

  /** Stops accepting at once; connections drain for the route's drainTimeoutMs. */
  retire(id: number): void {
    this.bindings.retirePort(id);
  }

  /** Forgets a retired port once its last connection is gone; false while some remain. */
  release(id: number): boolean {
    if (!this.bindings.releasePort(id)) return false;
    const before = handlers.size;
    handlers.delete(id);
    portsChanged(this.bindings, before);
    return true;
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
}
