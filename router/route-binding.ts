/**
 * One route's serving state on its port: balancer, live connections, counters. A new table
 * replaces the route in place; the binding decides each live connection's fate (keep, drain,
 * kill) from how its backend changed. Usually one binding per port; TLS ports shared by SNI
 * carry one per server-name group (see route-listener.ts).
 */
import type { LookupFunction, Socket } from 'node:net';
import type { Balancer } from './balancer';
import { createBalancer } from './balancer-factory';
import type { Logger } from '../common';
import { ProxiedConnection, setSocketOptions, type ConnectionHost } from './proxied-connection';
import type { Relay, RelayCloseReason } from './relay';
import { clientTls, routeLimits, type Backend, type Route } from '../protocol';
import { startClientTls } from './client-tls';
import { ServerTlsContext, sameTlsSettings } from './tls-context';
import { newRouteStats, type RouteStats } from './route-stats';
import type { ListenAddress } from './self-address';
import type { NativeAcceptor } from './native-accept';

export interface ListenerEnvironment {
  relay: Relay;
  logger: Logger;
  bindHost: string;
  backlog: number;
  /** Open the port with SO_REUSEPORT when the addon allows it. */
  reusePort: boolean;
  /** How long a shared TLS port waits for a client's ClientHello. */
  clientHelloTimeoutMs: number;
  keepAliveMs: number;
  /**
   * The native accept path, when the native relay runs and it is not switched off (its ports are
   * the router's native port table's; JS ports share its connection budget).
   */
  acceptor?: NativeAcceptor;
  /**
   * Shared across listeners: admits a connection of `binding` (whose `stats.active` does not
   * count it yet) under the router-wide limit, less what is reserved for the other routes.
   */
  admit(binding: RouteBinding): boolean;
  /** A connection of `binding` ended; its `stats.active` no longer counts it. */
  released(binding: RouteBinding): void;
  /** A client of `binding` was refused by its route's limit or the router-wide one. */
  limitReached(binding: RouteBinding, which: 'route' | 'global'): void;
  /** The router address that connecting to `host`:`port` would reach, if any. */
  ownAddressHit(host: string, port: number): ListenAddress | undefined;
  /** For a name on a port the router listens on: a lookup that refuses the router's addresses. */
  lookupFor(host: string, port: number): LookupFunction | undefined;
  /** Whether `b` is the router itself (one function per router, for routes pushed to the addon). */
  selfLoop(b: Backend): boolean;
  /** A terminating route's certificate could not be loaded (message names files, never contents). */
  certificateProblem(binding: RouteBinding, message: string): void;
  /** A backend of `binding` was not connected to because it is the router itself. */
  selfLoopRefused(binding: RouteBinding, backend: Backend, detail: string): void;
  /** A backend's TLS start failed (verification, a declined SSLRequest); logged, rate-limited. */
  backendTlsFailed(binding: RouteBinding, reason: string): void;
  /** False while a fail-closed router has lost its route source. */
  serving(): boolean;
}

export type ConnectionFate = 'keep' | 'drain' | 'kill';

/**
 * Decides what a table change means for a live connection. Fencing wins over everything: a
 * fenced state, a newer epoch, or (in primary mode) a backend that is no longer the primary
 * it was connected as, all cut the connection at once.
 */
export function connectionFate(route: Route, connected: Backend, connectedEpoch: number): ConnectionFate {
  const now = route.backends.find((b) => b.id === connected.id);
  if (!now) return 'drain';
  if (now.state === 'fenced' || now.epoch > connectedEpoch) return 'kill';
  if (route.mode === 'primary') {
    if (now.role !== 'primary') return 'kill';
    const newerPrimary = route.backends.some(
      (b) => b.role === 'primary' && b.state !== 'fenced' && b.epoch > now.epoch,
    );
    if (newerPrimary) return 'kill';
  }
  if (now.state === 'draining') return 'drain';
  return 'keep';
}

/** Identifies a route among those sharing a port: its server names, or '' for the port's default. */
export function bindingKey(route: Route): string {
  return route.sni && route.sni.length > 0
    ? route.sni
        .map((n) => n.toLowerCase())
        .sort()
        .join(',')
    : '';
}

export class RouteBinding implements ConnectionHost {
  readonly stats: RouteStats;
  readonly relay: Relay;
  readonly keepAliveMs: number;
  readonly connections = new Set<ProxiedConnection>();
  private route: Route;
  /** Built on the first pick after the route changed. */
  private balancer: Balancer | undefined;
  /** The certificate of a terminating route, reloaded when its files change. */
  private serverTls: ServerTlsContext | undefined;
  private readonly activeByBackend = new Map<string, number>();
  private onEmpty: (() => void) | undefined;
  /**
   * Whether this binding holds a reservation of the router-wide limit (routes in the table do,
   * retiring ones do not); the router sets it whenever a table is applied.
   */
  reserved = false;

  constructor(
    route: Route,
    private readonly env: ListenerEnvironment,
  ) {
    this.route = route;
    this.stats = newRouteStats(route.port, bindingKey(route));
    this.relay = env.relay;
    this.keepAliveMs = env.keepAliveMs;
    this.serverTls = this.buildServerTls(route);
  }

  currentRoute(): Route {
    return this.route;
  }

  pickBackend(tried: ReadonlySet<string>): Backend | undefined {
    this.balancer ??= this.buildBalancer(this.route);
    return this.balancer.pick(tried);
  }

  backendAcquired(backendId: string): void {
    this.activeByBackend.set(backendId, (this.activeByBackend.get(backendId) ?? 0) + 1);
  }

  backendReleased(backendId: string): void {
    const n = (this.activeByBackend.get(backendId) ?? 1) - 1;
    if (n <= 0) this.activeByBackend.delete(backendId);
    else this.activeByBackend.set(backendId, n);
  }

  activeFor(backendId: string): number {
    return this.activeByBackend.get(backendId) ?? 0;
  }

  /** The counters with live connections' bytes folded in, read at scrape time. */
  snapshot(): RouteStats {
    let liveIn = 0;
    let liveOut = 0;
    for (const c of this.connections) {
      liveIn += c.bytesIn;
      liveOut += c.bytesOut;
    }
    return {
      ...this.stats,
      closedBytesIn: this.stats.closedBytesIn + liveIn,
      closedBytesOut: this.stats.closedBytesOut + liveOut,
    };
  }

  connectionClosed(conn: ProxiedConnection, reason: RelayCloseReason | 'refused' | 'aborted'): void {
    if (!this.connections.delete(conn)) return;
    this.stats.active--;
    this.env.released(this);
    if (this.env.logger.isLevelEnabled('debug')) {
      this.env.logger.debug(
        { port: this.route.port, backend: conn.backend?.id, reason, bytesIn: conn.bytesIn, bytesOut: conn.bytesOut },
        'connection closed',
      );
    }
    if (this.connections.size === 0 && this.onEmpty) this.onEmpty();
  }

  /** Takes a new version of this port's route; returns how many connections were killed. */
  update(route: Route): number {
    const tlsChanged = !sameTlsSettings(clientTls(this.route), clientTls(route));
    this.route = route;
    this.balancer = undefined;
    // New settings (other files, a client CA) apply to new handshakes; established sessions stay.
    if (tlsChanged) this.serverTls = this.buildServerTls(route);
    let killed = 0;
    for (const conn of this.connections) {
      if (!conn.backend) continue;
      const fate = connectionFate(route, conn.backend, conn.epoch);
      if (fate === 'kill') {
        this.stats.killedFenced++;
        killed++;
        conn.kill();
        continue;
      }
      if (fate === 'drain') {
        conn.drain(routeLimits(route).drainTimeoutMs, () => this.onDrainExpired());
        continue;
      }
      conn.cancelDrain();
      conn.backend = route.backends.find((b) => b.id === conn.backend!.id) ?? conn.backend;
    }
    return killed;
  }

  /** The route left the table: drain what is connected, then call `onGone`. */
  retire(onGone: () => void): void {
    const drainMs = routeLimits(this.route).drainTimeoutMs;
    if (this.connections.size === 0) {
      onGone();
      return;
    }
    this.onEmpty = onGone;
    for (const conn of this.connections) conn.drain(drainMs, () => this.onDrainExpired());
  }

  /** Cuts every connection at once (fail-closed, shutdown). */
  killAll(): void {
    for (const conn of this.connections) conn.kill();
  }

  refusesAsSelfLoop(backend: Backend): boolean {
    const hit = this.env.ownAddressHit(backend.host, backend.port);
    if (!hit) return false;
    this.selfLoopDetected(backend, `the router listens on ${hit.host}:${hit.port}`);
    return true;
  }

  backendLookup(backend: Backend): LookupFunction | undefined {
    return this.env.lookupFor(backend.host, backend.port);
  }

  selfLoopDetected(backend: Backend, detail: string): void {
    this.stats.refusedSelfLoop++;
    this.env.selfLoopRefused(this, backend, detail);
  }

  tlsContext(): ServerTlsContext | undefined {
    return this.serverTls;
  }

  /** Why the last TLS start with a backend failed, for `/health`. */
  lastBackendTlsError: string | undefined;

  backendTlsFailed(message: string): void {
    this.lastBackendTlsError = message;
    this.env.backendTlsFailed(this, message);
  }

  certificateProblem(message: string): void {
    this.env.certificateProblem(this, message);
  }

  private buildServerTls(route: Route): ServerTlsContext | undefined {
    const tls = clientTls(route);
    if (tls?.mode !== 'terminate') return undefined;
    const context = new ServerTlsContext(tls);
    if (context.lastError) this.env.certificateProblem(this, context.lastError.message);
    return context;
  }

  /**
   * Takes a client accepted on this route's port; a route with TLS settings first runs the
   * client's TLS start (router/client-tls.ts), which hands the client back to `accept`.
   */
  acceptClient(client: Socket, optionsInherited: boolean, timeoutMs: number): void {
    if (clientTls(this.route) === undefined) {
      this.accept(client, undefined, optionsInherited);
      return;
    }
    if (!optionsInherited) setSocketOptions(client, this.keepAliveMs);
    startClientTls(client, this, timeoutMs);
  }

  private buildBalancer(route: Route): Balancer {
    return createBalancer(route, { active: (id) => this.activeFor(id) });
  }

  private onDrainExpired(): void {
    this.stats.killedDrained++;
  }

  /**
   * Takes a client accepted on this route's port. `initial` holds bytes already read from it
   * (a ClientHello read to choose the route); they reach the backend first. `optionsInherited`:
   * the client already has the router's TCP options from its listening socket.
   */
  accept(client: Socket, initial?: Buffer, optionsInherited = false): void {
    const overRoute = this.stats.active >= routeLimits(this.route).maxConnections;
    if (overRoute || !this.env.admit(this)) {
      this.stats.refusedMaxConnections++;
      this.env.limitReached(this, overRoute ? 'route' : 'global');
      client.destroy();
      return;
    }
    this.stats.active++;
    this.stats.total++;
    if (!optionsInherited) setSocketOptions(client, this.keepAliveMs);
    const conn = new ProxiedConnection(client, this, initial);
    this.connections.add(conn);
    conn.start();
  }
}
