/**
 * The router's natively accepted ports, kept without an object per port: typed arrays indexed by
 * port number hold each port's addon id and the mark of the last table that listed it, and one
 * array holds the route object it serves. Connections, counters and the listening socket live in
 * the addon (router/native-accept.ts). A table change is gathered here while the router walks the
 * table once (`change`, `retire`, `open`) and goes to the addon in one call (`commit`).
 *
 * Why no object per port: a 10,000-port table used to build a listener, a route binding, counters
 * and map entries per port (~6 µs and garbage per port), most of the JavaScript time of applying it.
 */
import { ErrorCode, SfError } from '../common';
import { anyBackendTls, type Backend, type Route } from '../protocol';
import { NATIVE_PORT_STAT_FIELDS } from '../native-bindings';
import type { NativeAcceptEventKind, NativeAcceptor, NativeCommitOptions, NativePortEvents } from './native-accept';
import { newRouteStats, type RouteStats } from './route-stats';

const PORTS = 65_536;
/** How often draining ports are checked for their last connection. */
const RELEASE_CHECK_MS = 100;

/** What the router does with a native port's refused clients (rate-limited logs). */
export interface NativePortHooks {
  limitReached(port: number, route: Route, which: 'route' | 'global', active: number): void;
  selfLoopRefused(port: number, route: Route): void;
  /** A backend's TLS start failed (the client went on to the next backend, if any). */
  backendTlsFailed(port: number, reason: string): void;
}

export interface NativeCommitResult {
  killed: number;
  opened: number[];
  failed: Array<{ port: number; error: SfError }>;
  /** Terminating routes of this change whose certificate did not load (their clients fail the handshake). */
  certificateErrors: Array<{ port: number; message: string }>;
}

export class NativePortTable implements NativePortEvents {
  /** Addon port id by port number; 0: not a native port of this router. */
  private readonly ids = new Int32Array(PORTS);
  /** Route served on each native port (the very object of the table that brought it). */
  private readonly routes = new Array<Route | undefined>(PORTS).fill(undefined);
  /** Marks the ports listed by the table being applied (Router.applyTable's count). */
  readonly seen = new Uint32Array(PORTS);
  /** The native ports in no order, and each port's place in it: add and remove in O(1). */
  private readonly list = new Int32Array(PORTS);
  private readonly place = new Int32Array(PORTS);
  private count = 0;
  /** Ports that left the table, by addon id, with their last route, until their last connection ends. */
  private readonly draining = new Map<number, Route>();
  private releaseTimer: NodeJS.Timeout | undefined;
  // The change being gathered for `commit`.
  private changedIds: number[] = [];
  private changedRoutes: Route[] = [];
  private retiredIds: number[] = [];
  private opening: Route[] = [];

  constructor(
    private readonly acceptor: NativeAcceptor,
    private readonly hooks: NativePortHooks,
  ) {
    acceptor.listen(this);
  }

  get size(): number {
    return this.count;
  }

  has(port: number): boolean {
    return this.ids[port] !== 0;
  }

  /** The route served on `port`, when it is a native port. */
  routeOf(port: number): Route | undefined {
    return this.routes[port];
  }

  /** The native ports, in no particular order. */
  ports(): number[] {
    return Array.from(this.list.subarray(0, this.count));
  }

  /** Ports not marked with `seen`: those the table being applied left out. */
  unseen(seen: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.count; i++) {
      const port = this.list[i]!;
      if (this.seen[port] !== seen) out.push(port);
    }
    return out;
  }

  /** Queues `route` as the new route of native port `port`. */
  change(port: number, route: Route): void {
    this.changedIds.push(this.ids[port]!);
    this.changedRoutes.push(route);
    this.routes[port] = route;
  }

  /**
   * Queues a fence without changing the route the port serves (a refused route's backends that
   * lead into the router itself are dropped before the port retires).
   */
  fence(port: number, route: Route): void {
    this.changedIds.push(this.ids[port]!);
    this.changedRoutes.push(route);
  }

  /** Queues `port` to stop accepting and drain; it is no longer one of the table's ports. */
  retire(port: number): void {
    const id = this.ids[port]!;
    if (id === 0) return;
    this.retiredIds.push(id);
    this.draining.set(id, this.routes[port]!);
    this.remove(port);
  }

  /** Queues a new port, opened with `route`. */
  open(route: Route): void {
    this.opening.push(route);
  }

  /** True when a change is waiting for `commit`. */
  pending(): boolean {
    return this.changedIds.length + this.retiredIds.length + this.opening.length > 0;
  }

  /**
   * Sends the gathered change to the addon in one call: changed routes (fences take effect before
   * this returns), then retirements, then new ports.
   */
  commit(host: string, options: NativeCommitOptions, selfLoop: (b: Backend) => boolean): NativeCommitResult {
    const result: NativeCommitResult = { killed: 0, opened: [], failed: [], certificateErrors: [] };
    if (!this.pending()) return result;
    const change = {
      changedIds: this.changedIds,
      changedRoutes: this.changedRoutes,
      retiredIds: this.retiredIds,
      opened: this.opening,
    };
    this.changedIds = [];
    this.changedRoutes = [];
    this.retiredIds = [];
    this.opening = [];
    let applied: ReturnType<NativeAcceptor['apply']>;
    try {
      applied = this.acceptor.apply(host, change, options, selfLoop);
    } catch (err) {
      // Arguments the addon refuses (a defect, not a port in use): nothing of this change applied.
      const error = new SfError(ErrorCode.ListenFailed, `native port table change refused: ${(err as Error).message}`);
      for (const route of change.opened) result.failed.push({ port: route.port, error });
      return result;
    }
    result.killed = applied.killed;
    for (let i = 0; i < change.opened.length; i++) {
      const route = change.opened[i]!;
      const id = applied.opened[i]!;
      if (typeof id !== 'number') {
        result.failed.push({
          port: route.port,
          error: new SfError(
            ErrorCode.ListenFailed,
            `cannot listen on ${host}:${route.port}: ${id.code ?? id.message}`,
          ),
        });
        continue;
      }
      this.add(route.port, id, route);
      result.opened.push(route.port);
    }
    for (let i = 0; i < change.changedRoutes.length; i++) {
      const changed = change.changedRoutes[i]!;
      if (changed.tls === undefined && !anyBackendTls(changed)) continue;
      const message = this.acceptor.tlsError(change.changedIds[i]!);
      if (message !== undefined) result.certificateErrors.push({ port: change.changedRoutes[i]!.port, message });
    }
    for (const port of result.opened) {
      const route = this.routes[port];
      if (route === undefined || (route.tls === undefined && !anyBackendTls(route))) continue;
      const message = this.tlsError(port);
      if (message !== undefined) result.certificateErrors.push({ port, message });
    }
    if (change.retiredIds.length > 0) this.releaseDrained();
    return result;
  }

  /** Cuts every connection of the table's ports (fail-closed), and of draining ones too (shutdown). */
  killAll(draining = false): void {
    for (let i = 0; i < this.count; i++) this.acceptor.killAll(this.ids[this.list[i]!]!);
    if (draining) for (const id of this.draining.keys()) this.acceptor.killAll(id);
  }

  /** Stops every port and cuts its connections; the addon forgets them once their connections are gone. */
  close(): void {
    for (const port of this.ports()) this.retire(port);
    this.commit('127.0.0.1', { backlog: 0, reusePort: false, keepAliveMs: 0 }, () => false);
    this.killAll(true);
    this.releaseDrained();
    this.acceptor.unlisten(this);
  }

  /** Counters of every native port, draining ones included, read from the addon in one call. */
  stats(): RouteStats[] {
    const ports = this.ports();
    const ids = ports.map((p) => this.ids[p]!);
    const drainingPorts: number[] = [];
    for (const [id, route] of this.draining) {
      ids.push(id);
      drainingPorts.push(route.port);
    }
    if (ids.length === 0) return [];
    const values = this.acceptor.statsMany(ids);
    const fields = NATIVE_PORT_STAT_FIELDS;
    const out: RouteStats[] = [];
    for (let i = 0; i < ids.length; i++) {
      const port = i < ports.length ? ports[i]! : drainingPorts[i - ports.length]!;
      const s = newRouteStats(port, '');
      const at = i * fields.length;
      if (values[at]! < 0) {
        out.push(s);
        continue;
      }
      s.active = values[at]!;
      s.total = values[at + 1]!;
      s.closedBytesIn = values[at + 2]!;
      s.closedBytesOut = values[at + 3]!;
      s.connectErrors = values[at + 4]!;
      s.connectTimeouts = values[at + 5]!;
      s.refusedNoBackend = values[at + 6]!;
      s.refusedMaxConnections = values[at + 7]!;
      s.refusedSelfLoop = values[at + 8]!;
      s.killedFenced = values[at + 9]!;
      s.killedDrained = values[at + 10]!;
      s.idleTimeouts = values[at + 11]!;
      s.tlsHandshakes = values[at + 12]!;
      s.tlsHandshakeErrors = values[at + 13]!;
      s.refusedPlaintext = values[at + 14]!;
      s.backendTlsErrors = values[at + 15]!;
      out.push(s);
    }
    return out;
  }

  /** Why the certificate of the native port's terminating route did not load, or undefined. */
  tlsError(port: number): string | undefined {
    const id = this.ids[port]!;
    return id === 0 ? undefined : this.acceptor.tlsError(id);
  }

  /** Why the native port's last TLS start with a backend failed, or undefined. */
  backendTlsFailure(port: number): string | undefined {
    const id = this.ids[port]!;
    return id === 0 ? undefined : this.acceptor.backendTlsFailure(id);
  }

  /** Live connections of the port's route to `backendId`. */
  activeFor(port: number, backendId: string): number {
    const id = this.ids[port]!;
    return id === 0 ? 0 : this.acceptor.activeFor(id, backendId);
  }

  /** Live connections of the port (0 when it is not a native port). */
  active(port: number): number {
    const id = this.ids[port]!;
    return id === 0 ? 0 : (this.acceptor.stats(id)?.active ?? 0);
  }

  nativeEvent(kind: NativeAcceptEventKind, portId: number, port: number): void {
    const route = this.ids[port] === portId ? this.routes[port] : this.draining.get(portId);
    if (!route) return;
    if (kind === 'self-loop') {
      this.hooks.selfLoopRefused(port, route);
      return;
    }
    if (kind === 'backend-tls') {
      this.hooks.backendTlsFailed(port, this.acceptor.backendTlsFailure(portId) ?? 'no reason recorded');
      return;
    }
    const active = this.acceptor.stats(portId)?.active ?? 0;
    this.hooks.limitReached(port, route, kind === 'route-limit' ? 'route' : 'global', active);
  }

  private add(port: number, id: number, route: Route): void {
    this.ids[port] = id;
    this.routes[port] = route;
    this.list[this.count] = port;
    this.place[port] = this.count;
    this.count++;
  }

  private remove(port: number): void {
    const at = this.place[port]!;
    const last = this.list[this.count - 1]!;
    this.list[at] = last;
    this.place[last] = at;
    this.count--;
    this.ids[port] = 0;
    this.routes[port] = undefined;
    this.seen[port] = 0;
  }

  /** Forgets the draining ports whose last connection is gone; checks again later while some remain. */
  private releaseDrained(): void {
    if (this.draining.size === 0) return;
    const ids = [...this.draining.keys()];
    const released = this.acceptor.release(ids);
    for (let i = 0; i < ids.length; i++) if (released[i] === 1) this.draining.delete(ids[i]!);
    if (this.draining.size === 0) {
      clearInterval(this.releaseTimer);
      this.releaseTimer = undefined;
      return;
    }
    if (this.releaseTimer === undefined) {
      this.releaseTimer = setInterval(() => this.releaseDrained(), RELEASE_CHECK_MS);
      this.releaseTimer.unref();
    }
  }
}
