/**
 * The router: serves a route table on its ports. Applying a table is synchronous up to the
 * point where every fenced connection is already destroyed; only opening new ports waits.
 */
import { ErrorCode, SfError } from '../common/errors';
import { createLogger, type Logger } from '../common/logger';
import type { Relay } from './relay';
import { createJsRelay } from './relay-js';
import type { Route, RouteTable } from '../protocol/route-model';
import type { ListenerEnvironment } from './route-binding';
import { RouteListener } from './route-listener';
import type { RouteSource } from './route-source';
import type { RouteStats } from './route-stats';
import { DEFAULT_ROUTER_OPTIONS, type RouterOptions } from './router-options';

export interface ApplyResult {
  version: number;
  opened: number[];
  closed: number[];
  updated: number;
  killed: number;
  /** Ports that could not be opened (in use, no permission); the rest of the table applies. */
  failed: Array<{ port: number; error: SfError }>;
}

export interface RouterStatus {
  tableVersion: number;
  routes: number;
  activeConnections: number;
  relay: Relay['kind'];
  source: string | undefined;
  sourceConnected: boolean;
  serving: boolean;
}

export class Router {
  readonly options: Readonly<Omit<RouterOptions, 'relay' | 'logger'>>;
  readonly relay: Relay;
  readonly logger: Logger;
  private table: RouteTable = { version: 0, routes: [] };
  private readonly listeners = new Map<number, RouteListener>();
  /** Listeners of removed ports whose connections are still draining. */
  private readonly retiring = new Set<RouteListener>();
  private activeConnections = 0;
  private source: RouteSource | undefined;
  private sourceConnected = true;
  private closed = false;
  private lastApply: Promise<ApplyResult> | undefined;
  private readonly env: ListenerEnvironment;

  constructor(options: Partial<RouterOptions> = {}) {
    const { relay, logger, ...rest } = options;
    this.options = { ...DEFAULT_ROUTER_OPTIONS, ...rest };
    this.relay = relay ?? createJsRelay();
    this.logger = logger ?? createLogger('router');
    this.env = {
      relay: this.relay,
      logger: this.logger,
      bindHost: this.options.bindHost,
      backlog: this.options.backlog,
      reusePort: this.options.reusePort,
      clientHelloTimeoutMs: this.options.clientHelloTimeoutMs,
      keepAliveMs: this.options.keepAliveMs,
      admit: () => {
        if (this.activeConnections >= this.options.maxConnections) return false;
        this.activeConnections++;
        return true;
      },
      released: () => {
        this.activeConnections--;
      },
      serving: () => this.serving(),
    };
  }

  /** Starts serving tables from `source`; rejects if its first table cannot be served. */
  async start(source: RouteSource): Promise<void> {
    this.source = source;
    let firstError: SfError | undefined;
    await source.start({
      onTable: (table) => {
        this.lastApply = this.applyTable(table);
        this.lastApply.then(
          (r) => r.failed.forEach((f) => this.logger.error({ port: f.port, code: f.error.code }, f.error.message)),
          () => undefined,
        );
      },
      onError: (err) => {
        firstError ??= err;
        this.logger.error({ code: err.code, field: err.field, source: source.description }, err.message);
      },
      onConnectivity: (connected) => this.setSourceConnected(connected),
    });
    const first = await this.lastApply;
    if (!first)
      throw firstError ?? new SfError(ErrorCode.RouteSource, `${source.description} delivered no route table`);
    if (first.failed.length > 0) {
      await this.close();
      throw first.failed[0]!.error;
    }
  }

  /** Re-reads the source (SIGHUP). */
  async reload(): Promise<void> {
    await this.source?.reload();
  }

  currentTable(): RouteTable {
    return this.table;
  }

  /**
   * Serves `table` from now on. Connections to fenced backends are destroyed before this
   * returns its promise; new ports are open when the promise resolves.
   */
  applyTable(table: RouteTable): Promise<ApplyResult> {
    if (this.closed) return Promise.reject(new SfError(ErrorCode.RouteSource, 'router is closed'));
    const result: ApplyResult = { version: table.version, opened: [], closed: [], updated: 0, killed: 0, failed: [] };
    const wanted = new Map<number, Route[]>();
    for (const r of table.routes) {
      const onPort = wanted.get(r.port);
      if (onPort) onPort.push(r);
      else wanted.set(r.port, [r]);
    }
    for (const [port, listener] of this.listeners) {
      if (wanted.has(port)) continue;
      this.listeners.delete(port);
      this.retiring.add(listener);
      listener.retire(() => this.retiring.delete(listener));
      result.closed.push(port);
    }
    const opening: Array<Promise<void>> = [];
    for (const [port, routes] of wanted) {
      const existing = this.listeners.get(port);
      if (existing) {
        if (existing.unchanged(routes)) continue;
        result.killed += existing.update(routes);
        result.updated++;
        continue;
      }
      const listener = new RouteListener(port, routes, this.env);
      this.listeners.set(port, listener);
      opening.push(
        listener.listen().then(
          () => {
            result.opened.push(port);
          },
          (error: SfError) => {
            if (this.listeners.get(port) === listener) this.listeners.delete(port);
            result.failed.push({ port, error });
          },
        ),
      );
    }
    this.table = table;
    if (result.killed > 0)
      this.logger.info({ version: table.version, killed: result.killed }, 'fenced connections destroyed');
    return Promise.all(opening).then(() => {
      this.logger.info(
        {
          version: table.version,
          routes: table.routes.length,
          opened: result.opened.length,
          closed: result.closed.length,
          updated: result.updated,
          failed: result.failed.length,
        },
        'route table applied',
      );
      return result;
    });
  }

  status(): RouterStatus {
    return {
      tableVersion: this.table.version,
      routes: this.table.routes.length,
      activeConnections: this.activeConnections,
      relay: this.relay.kind,
      source: this.source?.description,
      sourceConnected: this.sourceConnected,
      serving: this.serving(),
    };
  }

  /** Counters of every listening and draining port, with live byte counts folded in. */
  routeStats(): RouteStats[] {
    const out: RouteStats[] = [];
    for (const listener of [...this.listeners.values(), ...this.retiring]) {
      for (const binding of listener.allBindings()) {
        let liveIn = 0;
        let liveOut = 0;
        for (const c of binding.connections) {
          liveIn += c.bytesIn;
          liveOut += c.bytesOut;
        }
        out.push({
          ...binding.stats,
          closedBytesIn: binding.stats.closedBytesIn + liveIn,
          closedBytesOut: binding.stats.closedBytesOut + liveOut,
        });
      }
    }
    return out;
  }

  /** Clients refused on shared TLS ports because their server name matched no route. */
  refusedUnknownServerName(): Array<{ port: number; count: number }> {
    return [...this.listeners.values()].map((l) => ({ port: l.port, count: l.refusedUnknownServerName }));
  }

  /** Live connection count per backend id of the route on `port` (tests, least-conn checks). */
  activeByBackend(port: number, backendId: string, serverNames = ''): number {
    return this.listeners.get(port)?.bindings.get(serverNames)?.activeFor(backendId) ?? 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.source?.stop();
    const all = [...this.listeners.values(), ...this.retiring];
    this.listeners.clear();
    this.retiring.clear();
    await Promise.all(all.map((l) => l.close()));
  }

  private serving(): boolean {
    return this.sourceConnected || this.options.onDisconnect === 'keep-last';
  }

  private setSourceConnected(connected: boolean): void {
    if (this.sourceConnected === connected) return;
    this.sourceConnected = connected;
    this.logger.warn(
      { connected, policy: this.options.onDisconnect },
      connected ? 'route source reconnected' : 'route source lost',
    );
    if (!connected && this.options.onDisconnect === 'fail-closed') {
      // Without its source the router cannot learn of fences, so fail-closed cuts everything.
      for (const l of this.listeners.values()) l.killAll();
    }
  }
}
