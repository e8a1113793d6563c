/**
 * The router: serves a route table on its ports. Applying a table is synchronous up to the
 * point where every fenced connection is already destroyed; only opening new ports waits.
 */
import type { LookupFunction } from 'node:net';
import {
  ErrorCode,
  SfError,
  createLogger,
  listenBacklogCeiling,
  resolveListenBacklog,
  type ListenBacklog,
  type Logger,
  withDefaults,
} from '../common';
import type { Relay } from './relay';
import type { PortSteeringStatus } from '../native-bindings';
import { createJsRelay } from './relay-js';
import { anyBackendTls, clientTls, type Backend, type Route, type RouteTable } from '../protocol';
import { bindingKey, type ListenerEnvironment, type RouteBinding } from './route-binding';
import { RouteListener } from './route-listener';
import { routeJsReason } from './native-accept';
import { ListenFailures, type ListenFailure } from './listen-failures';
import { NativePortTable } from './native-port-table';
import { FDS_PER_CONNECTION, globalConnectionLimit, readFdLimit, reservedFds, routeReserve } from './connection-budget';
import { reserveDescriptorTable } from './descriptor-table';
import { RateLimitedLog } from './rate-limited-log';
import { guardedLookup, needsLookup, ownAddressHit, type ListenAddress } from './self-address';
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
  /** Routes left out because a backend is the router itself; the rest of the table applies. */
  refused: Array<{ port: number; error: SfError }>;
}

/** A backend of a table that leads into one of the router's own listening addresses. */
export interface SelfLoop {
  route: number;
  backend: number;
  target: ListenAddress;
}

export interface RouterStatus {
  tableVersion: number;
  routes: number;
  activeConnections: number;
  relay: Relay['kind'];
  /** Threads relaying (native: its loop threads, which also accept and connect natively accepted ports). */
  relayThreads: number;
  source: string | undefined;
  sourceConnected: boolean;
  serving: boolean;
  /** Client connections the router takes across all routes (from the descriptor limit). */
  connectionLimit: number;
  /** The soft RLIMIT_NOFILE read at start; null where it could not be read. */
  fdLimit: number | null;
  /**
   * Slots of the process's descriptor table, grown at start to what the connection limit holds
   * (router/descriptor-table.ts); null where /proc does not say.
   */
  fdTable: number | null;
  /**
   * Which path accepts each port: `native` ports are accepted, connected and relayed by the addon
   * alone; `js` ports by Node, with the reason per port (first 100 listed).
   */
  accept: {
    native: number;
    js: number;
    jsPorts: Array<{ port: number; reason: string }>;
    /** Each route port's listen queue: asked for, and held by the kernel (common/listen-backlog.ts). */
    backlog: ListenBacklog;
    /** Native ports opened through one listening socket per set of accept options (native relay only). */
    steering?: PortSteeringStatus;
  };
  /** Ports with TLS settings and the relay their connections use (terminated TLS is relayed in JS). */
  tlsPorts: TlsPortStatus[];
  /** Table ports the router could not open (first 100 listed), retried every `listenRetryMs`. */
  listenFailures: { count: number; ports: ListenFailure[] };
}

export interface TlsPortStatus {
  port: number;
  /** `terminate` or `passthrough` with clients; `backend` for TLS towards the backend only. */
  tls: 'terminate' | 'passthrough' | 'backend';
  relay: Relay['kind'];
  /** The router connects to (some of) the route's backends over TLS. */
  backendTls?: boolean;
  /** Why the last TLS start with one of those backends failed (verification, a declined SSLRequest). */
  lastBackendTlsError?: string;
  /** Why the route's certificate is not loaded, when it is not. */
  certificateError?: string;
}

/** Scratch marks by port number for `Router.selfLoops`, all zero between calls. */
const portMarks = new Uint8Array(65_536);
/** Scratch count of routes per port for `Router.applyTable`, all zero between calls. */
const portCounts = new Uint16Array(65_536);

export class Router {
  readonly options: Readonly<Omit<RouterOptions, 'relay' | 'logger'>>;
  readonly relay: Relay;
  readonly logger: Logger;
  private table: RouteTable = { version: 0, routes: [] };
  /** Ports accepted in JS (no addon, or a route that needs JS per connection). */
  private readonly listeners = new Map<number, RouteListener>();
  /** Ports the addon accepts: no object per port (router/native-port-table.ts). */
  private readonly native: NativePortTable | undefined;
  /** Listeners of removed ports whose connections are still draining. */
  private readonly retiring = new Set<RouteListener>();
  private activeConnections = 0;
  private source: RouteSource | undefined;
  private sourceConnected = true;
  private closed = false;
  private lastApply: Promise<ApplyResult> | undefined;
  /** Counts applied tables; a listener whose `seen` holds the current count is in the table. */
  private applied = 0;
  private readonly env: ListenerEnvironment;
  private readonly fdLimit: number | undefined;
  private fdTable: number | undefined;
  private readonly ownAddresses: ListenAddress[];
  private readonly limitLog: RateLimitedLog;
  private steeringReported = false;
  /** The router-wide limit in force, recomputed with each table (ports need descriptors too). */
  private connectionLimit: number;
  private readonly backlog: ListenBacklog;
  /** Connections reserved for each route of the table (connection-budget.ts routeReserve). */
  private reserve = 0;
  private reservedBindings = 0;
  /** Sum over reserved bindings of min(active, reserve): the part of the reservations in use. */
  private reservedInUse = 0;
  private refusedGlobalLimit = 0;
  private readonly refusedRoutes = new Map<number, number>();
  /** Route source problems by error code (`sf_router_source_errors_total`). */
  private readonly sourceErrors = new Map<string, number>();
  /** Table ports that could not be opened; retried every `listenRetryMs` while any is left. */
  private readonly listenFailures = new ListenFailures();
  private listenRetry: NodeJS.Timeout | null = null;

  constructor(options: Partial<RouterOptions> = {}) {
    const { relay, logger, ...rest } = options;
    this.options = withDefaults(DEFAULT_ROUTER_OPTIONS, rest);
    this.relay = relay ?? createJsRelay();
    this.logger = logger ?? createLogger('router');
    this.fdLimit = options.fdLimit ?? readFdLimit();
    this.ownAddresses = [...this.options.ownAddresses];
    this.connectionLimit = globalConnectionLimit(this.options.maxConnections, this.fdLimit, 0);
    this.backlog = resolveListenBacklog(this.options.backlog, listenBacklogCeiling());
    this.limitLog = new RateLimitedLog(this.logger, this.options.limitLogIntervalMs);
    this.env = {
      relay: this.relay,
      logger: this.logger,
      bindHost: this.options.bindHost,
      backlog: this.options.backlog,
      reusePort: this.options.reusePort,
      clientHelloTimeoutMs: this.options.clientHelloTimeoutMs,
      keepAliveMs: this.options.keepAliveMs,
      ...(this.relay.acceptor ? { acceptor: this.relay.acceptor } : {}),
      admit: (binding) => this.admit(binding),
      released: (binding) => {
        if (this.relay.acceptor) {
          this.relay.acceptor.released(binding.stats.active, binding.reserved);
          return;
        }
        this.activeConnections--;
        if (binding.reserved && binding.stats.active < this.reserve) this.reservedInUse--;
      },
      limitReached: (binding, which) =>
        this.limitReached(
          binding.stats.port,
          binding.stats.sni,
          binding.stats.active,
          binding.currentRoute().maxConnections,
          which,
        ),
      selfLoop: (b) => this.ownAddressHit(b.host, b.port) !== undefined,
      ownAddressHit: (host, port) => this.ownAddressHit(host, port),
      lookupFor: (host, port) => this.lookupFor(host, port),
      selfLoopRefused: (binding, backend, detail) =>
        this.selfLoopRefused(binding.stats.port, binding.stats.sni, backend, detail),
      backendTlsFailed: (binding, reason) => this.backendTlsFailed(binding.stats.port, binding.stats.sni, reason),
      certificateProblem: (binding, message) => {
        const { port } = binding.stats;
        this.limitLog.warn(
          `tls:${port}`,
          { port, code: ErrorCode.Certificate },
          `route certificate not loaded: ${message}`,
        );
      },
      serving: () => this.serving(),
    };
    const acceptor = this.relay.acceptor;
    this.native = acceptor
      ? new NativePortTable(acceptor, {
          limitReached: (port, route, which, active) =>
            this.limitReached(port, '', active, route.maxConnections, which),
          selfLoopRefused: (port, route) => {
            const backend = route.backends.find((b) => this.ownAddressHit(b.host, b.port));
            if (backend)
              this.selfLoopRefused(port, '', backend, 'the backend is one of the router listening addresses');
          },
          backendTlsFailed: (port, reason) => this.backendTlsFailed(port, '', reason),
        })
      : undefined;
  }

  /** Every client of a backend whose certificate stopped verifying fails: the log says why, once per interval. */
  private backendTlsFailed(port: number, sni: string, reason: string): void {
    this.limitLog.warn(
      `backend-tls:${port}:${sni}`,
      { port, sni, code: ErrorCode.Certificate },
      `TLS to a backend failed (the next backend is tried): ${reason}`,
    );
  }

  private selfLoopRefused(port: number, sni: string, backend: Backend, detail: string): void {
    this.limitLog.warn(
      `self-loop:${port}:${sni}:${backend.id}`,
      { port, sni, backend: backend.id, host: backend.host, backendPort: backend.port },
      `backend not connected: it is the router itself (${detail})`,
    );
  }

  /**
   * Records another address this process listens on (the admin endpoint, once its port is
   * known): from now on no backend may lead into it, in new tables or on connect.
   */
  addOwnAddress(address: ListenAddress): void {
    this.ownAddresses.push({ ...address });
  }

  /**
   * The backends of `table` that lead into the router's own addresses: the table's route ports
   * on the bind address, and the other addresses it listens on. Names other than localhost are
   * not resolved here; connect time checks them after resolution.
   */
  selfLoops(table: RouteTable): SelfLoop[] {
    // Indexed by port in a bitmap of all 65,536 (bit 1: a route port of the table, bit 2: another
    // address the router listens on): a 10,000-route table costs one array read per backend and
    // allocates nothing per route (a Set of 10,000 ports took ~3 ms to build); only a backend on
    // one of the router's ports has its host looked at.
    const marks = portMarks;
    const routes = table.routes;
    for (let i = 0; i < routes.length; i++) marks[routes[i]!.port] = 1;
    for (const a of this.ownAddresses) marks[a.port]! |= 2;
    const loops: SelfLoop[] = [];
    try {
      for (let i = 0; i < routes.length; i++) {
        const backends = routes[i]!.backends;
        for (let j = 0; j < backends.length; j++) {
          const b = backends[j]!;
          const mark = marks[b.port]!;
          if (mark === 0) continue;
          const onPort: ListenAddress[] = mark & 1 ? [{ host: this.options.bindHost, port: b.port }] : [];
          for (const a of this.ownAddresses) if (a.port === b.port) onPort.push(a);
          const target = ownAddressHit(b.host, b.port, onPort);
          if (target) loops.push({ route: i, backend: j, target });
        }
      }
    } finally {
      for (let i = 0; i < routes.length; i++) marks[routes[i]!.port] = 0;
      for (const a of this.ownAddresses) marks[a.port] = 0;
    }
    return loops;
  }

  /**
   * Throws when `table` has a backend that is the router itself. Route files are checked whole
   * this way (a bad file is refused); pushed tables lose only the offending routes (applyTable).
   */
  checkTable(table: RouteTable): void {
    const loop = this.selfLoops(table)[0];
    if (loop) throw selfLoopError(table, loop);
  }

  /** Starts serving tables from `source`; rejects if its first table cannot be served. */
  async start(source: RouteSource): Promise<void> {
    this.source = source;
    this.fdTable = reserveDescriptorTable(reservedFds(0) + FDS_PER_CONNECTION * this.connectionLimit);
    if (this.backlog.effective < this.backlog.requested)
      this.logger.warn(
        { backlog: this.backlog.requested, somaxconn: this.backlog.ceiling },
        'listen backlog above net.core.somaxconn: the kernel queues at most somaxconn clients per route port',
      );
    let firstError: SfError | undefined;
    await source.start({
      check: (table) => this.checkTable(table),
      onTable: (table) => {
        this.lastApply = this.applyTable(table);
        return this.lastApply;
      },
      listenFailures: () => this.listenFailures.list(),
      onError: (err) => {
        firstError ??= err;
        this.sourceErrors.set(err.code, (this.sourceErrors.get(err.code) ?? 0) + 1);
        this.logger.error({ code: err.code, field: err.field, source: source.description }, err.message);
      },
      onConnectivity: (connected) => this.setSourceConnected(connected),
    });
    const first = await this.lastApply;
    if (!first)
      throw firstError ?? new SfError(ErrorCode.RouteSource, `${source.description} delivered no route table`);
    if (first.failed.length > 0 && source.strictStart === true) {
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
  applyTable(input: RouteTable): Promise<ApplyResult> {
    if (this.closed) return Promise.reject(new SfError(ErrorCode.RouteSource, 'router is closed'));
    const result: ApplyResult = {
      version: input.version,
      opened: [],
      closed: [],
      updated: 0,
      killed: 0,
      failed: [],
      refused: [],
    };
    const table = this.withoutSelfLoops(input, result);
    const native = this.native;
    // One pass over the table. A port whose single route is the very object already served costs
    // a typed-array read or one lookup (route sources keep unchanged route objects across versions,
    // so a one-route change to a 10,000-route table touches one port). Natively accepted ports
    // have no object here: their changes are gathered in the native port table and go to the addon
    // in one call below. Only JS ports, and ports with several routes (SNI), are grouped in a Map.
    const seen = ++this.applied;
    const routes = table.routes;
    const counts = portCounts;
    for (let i = 0; i < routes.length; i++) counts[routes[i]!.port]!++;
    let kept = 0;
    let nativeSeen = 0;
    const wanted = new Map<number, Route[]>();
    try {
      for (let i = 0; i < routes.length; i++) {
        const r = routes[i]!;
        const port = r.port;
        if (counts[port]! > 1) {
          // Several routes on one port (told apart by SNI): always the JS path.
          const group = wanted.get(port);
          if (group) group.push(r);
          else wanted.set(port, [r]);
          continue;
        }
        if (native?.has(port)) {
          if (native.routeOf(port) === r) {
            native.seen[port] = seen;
            nativeSeen++;
          } else if (routeJsReason(r) === undefined) {
            native.seen[port] = seen;
            nativeSeen++;
            native.change(port, r);
            result.updated++;
          } else {
            // Its route now needs JS (PROXY header, TLS, names): the native port retires (its
            // listening socket closes in the addon call below) and the port opens on the JS path.
            wanted.set(port, [r]);
          }
          continue;
        }
        const listener = this.listeners.get(port);
        if (listener !== undefined) {
          if (listener.soleRoute() === r) {
            listener.seen = seen;
            kept++;
          } else wanted.set(port, [r]);
          continue;
        }
        if (native !== undefined && routeJsReason(r) === undefined) native.open(r);
        else wanted.set(port, [r]);
      }
    } finally {
      for (let i = 0; i < routes.length; i++) counts[routes[i]!.port] = 0;
    }
    if (native !== undefined && nativeSeen < native.size) {
      for (const port of native.unseen(seen)) {
        native.retire(port);
        // A port moving to the JS path is not closed: it opens again below.
        if (!wanted.has(port)) result.closed.push(port);
      }
    }
    let inWanted = 0;
    for (const port of wanted.keys()) if (this.listeners.has(port)) inWanted++;
    if (kept + inWanted < this.listeners.size) {
      for (const [port, listener] of this.listeners) {
        if (listener.seen === seen || wanted.has(port)) continue;
        this.listeners.delete(port);
        this.retiring.add(listener);
        listener.retire(() => this.retiring.delete(listener));
        result.closed.push(port);
      }
    }
    const openJs: RouteListener[] = [];
    // Budgets and reservations change only with the set of ports and routes; a table that only
    // changes backends (the common push, a fence) skips the pass over every port.
    let structural = result.closed.length > 0;
    for (const [port, routes] of wanted) {
      const existing = this.listeners.get(port);
      if (existing) {
        if (existing.unchanged(routes)) continue;
        const bindings = existing.bindingKeys();
        result.killed += existing.update(routes);
        if (existing.bindingKeys() !== bindings) structural = true;
        result.updated++;
        continue;
      }
      structural = true;
      const listener = new RouteListener(port, routes, this.env);
      this.listeners.set(port, listener);
      openJs.push(listener);
    }
    // The table's change to natively accepted ports, in one call: changed routes (fences are
    // applied before it returns), removed ports, new ports each with its route.
    if (native?.pending()) {
      const committed = native.commit(
        this.options.bindHost,
        {
          backlog: this.options.backlog,
          reusePort: this.options.reusePort,
          keepAliveMs: this.options.keepAliveMs,
          handshakeTimeoutMs: this.options.clientHelloTimeoutMs,
          ...(this.options.steerMinPorts !== undefined ? { steerMinPorts: this.options.steerMinPorts } : {}),
        },
        this.env.selfLoop,
      );
      result.killed += committed.killed;
      this.reportSteering();
      for (const c of committed.certificateErrors)
        this.limitLog.warn(
          `tls:${c.port}`,
          { port: c.port, code: ErrorCode.Certificate },
          `route certificate not loaded: ${c.message}`,
        );
      if (committed.opened.length > 0 || committed.failed.length > 0) structural = true;
      for (const port of committed.opened) result.opened.push(port);
      for (const f of committed.failed) result.failed.push(f);
    }
    // JS ports listen only now: a port that moved off the native path was closed by the call above.
    const opening = openJs.map((listener) =>
      listener.listen().then(
        () => {
          result.opened.push(listener.port);
        },
        (error: SfError) => {
          if (this.listeners.get(listener.port) === listener) {
            this.listeners.delete(listener.port);
            this.rebudget();
          }
          result.failed.push({ port: listener.port, error });
        },
      ),
    );
    this.table = table;
    if (structural) this.rebudget();
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
          refused: result.refused.length,
          connectionLimit: this.connectionLimit,
        },
        'route table applied',
      );
      this.noteListenOutcome(result);
      return result;
    });
  }

  /**
   * Keeps the ports that failed to open, logs each new failure and each recovery once, and tries
   * the failed ports again later: the holder of a port may let it go (an old process exiting).
   */
  private noteListenOutcome(result: ApplyResult): void {
    if (result.failed.length === 0 && this.listenFailures.size === 0) return;
    let ports: Set<number> | undefined;
    const inTable = (port: number): boolean => (ports ??= new Set(this.table.routes.map((r) => r.port))).has(port);
    const { fresh, recovered } = this.listenFailures.update(result.failed, result.opened, inTable);
    for (const f of fresh)
      this.logger.error(
        { port: f.port, retryMs: this.options.listenRetryMs },
        `${f.reason}: the route is not served here, and control is told so; retrying`,
      );
    for (const port of recovered) this.logger.info({ port }, 'route port listening after failed attempts');
    if (this.closed || this.listenRetry !== null || this.listenFailures.size === 0) return;
    this.listenRetry = setTimeout(() => {
      this.listenRetry = null;
      // The table in force again: ports that are open cost nothing, failed ones are opened anew.
      if (!this.closed) this.lastApply = this.applyTable(this.table);
    }, this.options.listenRetryMs);
    this.listenRetry.unref();
  }

  /**
   * A pushed table may carry a route whose backend is the router itself (a bug in control, or
   * a write to the state store by someone else): that route is refused, with a log line and
   * `sf_router_routes_refused_total`, and the rest applies. Its live connections first meet the
   * new version's fences (so a fence pushed together with the loop still cuts them), then drain
   * like those of any route that left the table.
   */
  private withoutSelfLoops(table: RouteTable, result: ApplyResult): RouteTable {
    const loops = this.selfLoops(table);
    if (loops.length === 0) return table;
    const refused = new Map<number, SelfLoop>();
    for (const loop of loops) if (!refused.has(loop.route)) refused.set(loop.route, loop);
    for (const [index, loop] of refused) {
      const route = table.routes[index]!;
      const error = selfLoopError(table, loop);
      result.refused.push({ port: route.port, error });
      this.refusedRoutes.set(route.port, (this.refusedRoutes.get(route.port) ?? 0) + 1);
      this.logger.error(
        { version: table.version, port: route.port, sni: route.sni, field: error.field, code: error.code },
        `route refused: ${error.message}`,
      );
      const loopIds = new Set(loops.filter((l) => l.route === index).map((l) => route.backends[l.backend]!.id));
      const withoutLoops = { ...route, backends: route.backends.filter((b) => !loopIds.has(b.id)) };
      const binding = this.listeners.get(route.port)?.bindings.get(bindingKey(route));
      if (binding) result.killed += binding.update(withoutLoops);
      // A native port's fence goes to the addon with the rest of the change, ahead of retirements.
      else if (this.native?.has(route.port) && bindingKey(route) === '') this.native.fence(route.port, withoutLoops);
    }
    return { version: table.version, routes: table.routes.filter((_, i) => !refused.has(i)) };
  }

  status(): RouterStatus {
    const jsPorts: Array<{ port: number; reason: string }> = [];
    const native = this.native?.size ?? 0;
    for (const l of this.listeners.values()) {
      if (jsPorts.length >= 100) break;
      jsPorts.push({ port: l.port, reason: l.jsReason });
    }
    return {
      tableVersion: this.table.version,
      routes: this.table.routes.length,
      activeConnections: this.relay.acceptor ? this.relay.acceptor.budget().active : this.activeConnections,
      relay: this.relay.kind,
      relayThreads: this.relay.threads ?? 1,
      source: this.source?.description,
      sourceConnected: this.sourceConnected,
      serving: this.serving(),
      connectionLimit: this.connectionLimit,
      fdLimit: this.fdLimit ?? null,
      fdTable: this.fdTable ?? null,
      tlsPorts: this.tlsPorts(),
      accept: {
        native,
        js: this.listeners.size,
        jsPorts,
        backlog: this.backlog,
        ...(this.relay.steering ? { steering: this.relay.steering() } : {}),
      },
      listenFailures: { count: this.listenFailures.size, ports: this.listenFailures.list() },
    };
  }

  /** Says once, the first time it shows, that big tables' ports cannot be steered (and why). */
  private reportSteering(): void {
    if (this.steeringReported || !this.relay.steering) return;
    const steering = this.relay.steering();
    if (steering.available || steering.reason === '') return;
    this.steeringReported = true;
    this.logger.warn(
      { reason: steering.reason },
      'big tables open a listening socket per port: the port-steering program could not be set up (docs/native-relay.md)',
    );
  }

  private tlsPorts(): TlsPortStatus[] {
    const out: TlsPortStatus[] = [];
    for (const listener of this.listeners.values()) {
      for (const binding of listener.bindings.values()) {
        const route = binding.currentRoute();
        const tls = clientTls(route);
        if (!tls && !anyBackendTls(route)) continue;
        const js = tls?.mode === 'terminate' || anyBackendTls(route);
        const error = binding.tlsContext()?.lastError?.message;
        out.push({
          port: route.port,
          tls: tls?.mode ?? 'backend',
          relay: js ? 'js' : this.relay.kind,
          ...(anyBackendTls(route) ? { backendTls: true } : {}),
          ...(binding.lastBackendTlsError ? { lastBackendTlsError: binding.lastBackendTlsError } : {}),
          ...(error ? { certificateError: error } : {}),
        });
      }
    }
    // Terminating routes on the native accept path: the relay threads run their handshakes.
    const native = this.native;
    if (native !== undefined) {
      for (const port of native.ports()) {
        const route = native.routeOf(port);
        if (route === undefined) continue;
        const tls = clientTls(route);
        if (tls === undefined && !anyBackendTls(route)) continue;
        const error = native.tlsError(port);
        const failure = anyBackendTls(route) ? native.backendTlsFailure(port) : undefined;
        out.push({
          port,
          tls: tls?.mode ?? 'backend',
          relay: 'native',
          ...(anyBackendTls(route) ? { backendTls: true } : {}),
          ...(failure ? { lastBackendTlsError: failure } : {}),
          ...(error ? { certificateError: error } : {}),
        });
      }
    }
    return out;
  }

  /** Clients refused because the router-wide limit (or another route's reservation) was reached. */
  refusedByGlobalLimit(): number {
    if (this.relay.acceptor) return this.relay.acceptor.budget().refusedGlobal;
    return this.refusedGlobalLimit;
  }

  /** Problems the route source reported, per error code (a refused backwards version, a lost connection...). */
  sourceErrorCounts(): Array<{ code: string; count: number }> {
    return [...this.sourceErrors].map(([code, count]) => ({ code, count }));
  }

  /** Pushed routes refused per port because a backend was the router itself. */
  refusedRouteCounts(): Array<{ port: number; count: number }> {
    return [...this.refusedRoutes].map(([port, count]) => ({ port, count }));
  }

  /** Counters of every listening and draining port, with live byte counts folded in. */
  routeStats(): RouteStats[] {
    const out: RouteStats[] = [];
    for (const listener of [...this.listeners.values(), ...this.retiring]) {
      for (const binding of listener.allBindings()) out.push(binding.snapshot());
    }
    if (this.native) for (const s of this.native.stats()) out.push(s);
    return out;
  }

  /** Clients refused on shared TLS ports because their server name matched no route. */
  refusedUnknownServerName(): Array<{ port: number; count: number }> {
    const out = [...this.listeners.values()].map((l) => ({ port: l.port, count: l.refusedUnknownServerName }));
    for (const port of this.native?.ports() ?? []) out.push({ port, count: 0 });
    return out;
  }

  /** Live connection count per backend id of the route on `port` (tests, least-conn checks). */
  activeByBackend(port: number, backendId: string, serverNames = ''): number {
    if (serverNames === '' && this.native?.has(port)) return this.native.activeFor(port, backendId);
    return this.listeners.get(port)?.bindings.get(serverNames)?.activeFor(backendId) ?? 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.listenRetry !== null) clearTimeout(this.listenRetry);
    await this.source?.stop();
    const all = [...this.listeners.values(), ...this.retiring];
    this.listeners.clear();
    this.retiring.clear();
    this.native?.close();
    await Promise.all(all.map((l) => l.close()));
  }

  /**
   * Admits a client of `binding` when the router-wide limit, less the unused reservations of
   * the other routes, has room: one route's idle clients cannot take the last descriptors from
   * another route.
   */
  private admit(binding: RouteBinding): boolean {
    if (this.relay.acceptor) return this.relay.acceptor.admit(binding.stats.active, binding.reserved);
    const active = binding.stats.active;
    const ownUnused = binding.reserved ? Math.max(0, this.reserve - active) : 0;
    const othersUnused = this.reserve * this.reservedBindings - this.reservedInUse - ownUnused;
    if (this.activeConnections >= this.connectionLimit - othersUnused) return false;
    this.activeConnections++;
    if (binding.reserved && active < this.reserve) this.reservedInUse++;
    return true;
  }

  private limitReached(
    port: number,
    sni: string,
    active: number,
    limit: number | undefined,
    which: 'route' | 'global',
  ): void {
    if (which === 'route') {
      this.limitLog.warn(
        `route:${port}:${sni}`,
        { port, sni, active, limit },
        'route connection limit reached; refusing new clients of this route',
      );
      return;
    }
    if (!this.relay.acceptor) this.refusedGlobalLimit++;
    this.limitLog.warn(
      'global',
      {
        port,
        sni,
        active: this.status().activeConnections,
        limit: this.connectionLimit,
        fdLimit: this.fdLimit ?? null,
        reservePerRoute: this.reserve,
      },
      "router connection limit reached (or only other routes' reservations are left); refusing new clients",
    );
  }

  /**
   * Recomputes the router-wide limit and the per-route reservations for the ports and routes
   * now in the table; bindings that left it (retiring) keep their connections but no reservation.
   */
  private rebudget(): void {
    const nativePorts = this.native?.size ?? 0;
    this.connectionLimit = globalConnectionLimit(
      this.options.maxConnections,
      this.fdLimit,
      this.listeners.size + nativePorts,
    );
    // A native port carries one route, whose share the addon counts (Engine::Rebudget).
    let bindings = nativePorts;
    for (const l of this.listeners.values()) bindings += l.bindings.size;
    this.reserve = routeReserve(this.connectionLimit, bindings);
    this.reservedBindings = bindings;
    this.reservedInUse = 0;
    for (const l of this.listeners.values()) {
      for (const b of l.bindings.values()) {
        b.reserved = true;
        this.reservedInUse += Math.min(b.stats.active, this.reserve);
      }
      for (const b of l.retiring) b.reserved = false;
    }
    for (const l of this.retiring) for (const b of l.allBindings()) b.reserved = false;
    this.relay.acceptor?.rebudget(this.connectionLimit, this.reserve, this.reservedBindings, this.reservedInUse);
  }

  /** The router's listening addresses that `host`:`port` leads into, checked on each connect. */
  private ownAddressHit(host: string, port: number): ListenAddress | undefined {
    if (this.hasPort(port)) {
      const hit = ownAddressHit(host, port, [{ host: this.options.bindHost, port }]);
      if (hit) return hit;
    }
    // Usually one or two entries (the admin endpoint); the port compares first.
    for (const a of this.ownAddresses) if (a.port === port && ownAddressHit(host, port, [a])) return a;
    return undefined;
  }

  private lookupFor(host: string, port: number): LookupFunction | undefined {
    const own = this.hasPort(port) || this.ownAddresses.some((a) => a.port === port);
    if (!own || !needsLookup(host)) return undefined;
    return guardedLookup(port, () => [
      ...(this.hasPort(port) ? [{ host: this.options.bindHost, port }] : []),
      ...this.ownAddresses,
    ]);
  }

  /** Whether `port` is one of the table's route ports (either path). */
  private hasPort(port: number): boolean {
    return this.listeners.has(port) || (this.native?.has(port) ?? false);
  }

  private serving(): boolean {
    return this.sourceConnected || this.options.onDisconnect === 'keep-last';
  }

  private setSourceConnected(connected: boolean): void {
    if (this.sourceConnected === connected) return;
    this.sourceConnected = connected;
    this.relay.acceptor?.setServing(this.serving());
    this.logger.warn(
      { connected, policy: this.options.onDisconnect },
      connected ? 'route source reconnected' : 'route source lost',
    );
    if (!connected && this.options.onDisconnect === 'fail-closed') {
      // Without its source the router cannot learn of fences, so fail-closed cuts everything.
      for (const l of this.listeners.values()) l.killAll();
      this.native?.killAll();
    }
  }
}

function selfLoopError(table: RouteTable, loop: SelfLoop): SfError {
  const backend: Backend = table.routes[loop.route]!.backends[loop.backend]!;
  const field = `routes[${loop.route}].backends[${loop.backend}]`;
  return new SfError(
    ErrorCode.InvalidRouteTable,
    `${field} ${backend.host}:${backend.port} is the router's own listening address ` +
      `${loop.target.host}:${loop.target.port}; a route to it would loop back into the router`,
    field,
  );
}
