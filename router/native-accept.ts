/**
 * The native accept path: for a route port that needs no JavaScript per connection, the addon
 * owns the listening socket, accepts on its relay threads, picks the backend from a copy of the
 * route held in native memory, connects without blocking and relays, so a connection never
 * becomes a `net.Socket` (docs/native-relay.md, "Native accept path").
 *
 * JavaScript keeps control: it pushes a port's route on every table change (`setRoute`, which
 * also fences: connections of a fenced backend or an older epoch are reset before it returns),
 * reads the counters at scrape time, and hears about refused clients in batches.
 */
import { isIP } from 'node:net';
import {
  NATIVE_BACKEND_STATE,
  NATIVE_PORT_STAT_FIELDS,
  NATIVE_ROUTE_MODE,
  NativeAcceptEvent,
  type NativeBindings,
  type NativeBudgetHandle,
} from '../native-bindings';
import { routeLimits, type Backend, type Route } from '../protocol';

/** The counters the addon keeps per natively accepted port. */
export type NativePortStats = Record<(typeof NATIVE_PORT_STAT_FIELDS)[number], number>;

export type NativeAcceptEventKind = (typeof NativeAcceptEvent)[number];

/** Why a port's routes must stay on the JS path (shown per port in `/health`), or undefined. */
export function jsPathReason(routes: readonly Route[]): string | undefined {
  if (routes.length !== 1 || (routes[0]!.sni?.length ?? 0) > 0) return 'sni';
  const route = routes[0]!;
  if (route.proxyProtocol) return 'proxy-protocol';
  if (route.tls) return 'tls';
  // Names are resolved by Node, through a lookup that refuses the router's own addresses.
  if (route.backends.some((b) => isIP(b.host) === 0)) return 'host-name';
  return undefined;
}

/** Event handlers by port id, for every acceptor of the process (the addon has one queue). */
const handlers = new Map<number, (kind: NativeAcceptEventKind) => void>();
let eventsBound = false;

function onEvents(flat: number[]): void {
  for (let i = 0; i + 2 < flat.length; i += 3) {
    const kind = NativeAcceptEvent[flat[i]!];
    if (kind) handlers.get(flat[i + 1]!)?.(kind);
  }
}

/** One router's view of the native accept path: its ports and its connection budget. */
export class NativeAcceptor {
  private readonly budgetHandle: NativeBudgetHandle;

  constructor(private readonly bindings: NativeBindings) {
    if (!eventsBound) bindings.initEvents(onEvents);
    eventsBound = true;
    this.budgetHandle = bindings.createBudget();
  }

  /** Listens on the port; throws a system error (`code` EADDRINUSE...) when refused. */
  open(
    host: string,
    port: number,
    options: { backlog: number; reusePort: boolean; keepAliveMs: number },
    onEvent: (kind: NativeAcceptEventKind) => void,
  ): number {
    const bindHost = host === 'localhost' ? '127.0.0.1' : host;
    const id = this.bindings.openPort(
      this.budgetHandle,
      bindHost,
      port,
      options.backlog,
      options.reusePort,
      options.keepAliveMs,
    );
    handlers.set(id, onEvent);
    return id;
  }

  /**
   * Pushes the port's route; connections of fenced backends are destroyed (RST) before this
   * returns. `selfLoop` marks backends that are the router itself: never connected, counted.
   */
  setRoute(id: number, route: Route, selfLoop: (b: Backend) => boolean): number {
    const limits = routeLimits(route);
    const n = route.backends.length;
    const ids = new Array<string>(n);
    const hosts = new Array<string>(n);
    const numbers = new Array<number>(n * 5);
    route.backends.forEach((b, i) => {
      ids[i] = b.id;
      hosts[i] = b.host;
      numbers[i * 5] = b.port;
      numbers[i * 5 + 1] = b.weight;
      numbers[i * 5 + 2] = b.epoch;
      numbers[i * 5 + 3] =
        selfLoop(b) && b.state === 'active' ? NATIVE_BACKEND_STATE.selfLoop : NATIVE_BACKEND_STATE[b.state];
      numbers[i * 5 + 4] = b.role === 'primary' ? 1 : 0;
    });
    return this.bindings.setRoute(
      id,
      NATIVE_ROUTE_MODE[route.mode],
      limits.connectTimeoutMs,
      limits.idleTimeoutMs,
      limits.drainTimeoutMs,
      Number.isFinite(limits.maxConnections) ? limits.maxConnections : -1,
      ids,
      hosts,
      numbers,
    );
  }

  /** Stops accepting at once; connections drain for the route's drainTimeoutMs. */
  retire(id: number): void {
    this.bindings.retirePort(id);
  }

  /** Forgets a retired port once its last connection is gone; false while some remain. */
  release(id: number): boolean {
    if (!this.bindings.releasePort(id)) return false;
    handlers.delete(id);
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
