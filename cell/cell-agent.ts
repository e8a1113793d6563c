/**
 * The cell agent (`sf cell`): one per host. It registers the cell in Redis with a TTL heartbeat,
 * converges its instances to the desired specs control writes, executes control's orders and
 * reports actual state. The protocol is in cell-protocol.ts and docs/cells.md.
 *
 * Three Redis connections, because a subscriber and a blocking BRPOP each monopolise one: commands
 * (heartbeat, reports, leases), the notify subscription, and the order queue.
 */
import { homedir } from 'node:os';
import path from 'node:path';
import { mkdir } from 'node:fs/promises';
import { type Redis } from 'ioredis';
import {
  withDefaults,
  createRedis,
  createLogger,
  type Logger,
  ErrorCode,
  errorMessageOf,
  schemaError,
  redactRedisUrl,
} from '../common';
import {
  DEFAULT_KEY_PREFIX,
  keyLayout,
  type KeyLayout,
  ENGINE_KINDS,
  heartbeatCell,
  instanceSpecSchema,
  NOTIFY_DESIRED,
  ORDER_RESULT_TTL_MS,
  ORDER_RUNNING_TTL_MS,
  orderSchema,
  type ActualInstance,
  type CellEvent,
  type CellRecord,
  type EngineKind,
  type ExecutorKind,
  type InstanceSpec,
  type OrderResult,
  type SidecarKind,
} from '../protocol';
import { z } from 'zod';
import { CellMetrics, startCellMetricsServer } from './cell-metrics';
import { CellInstances } from './cell-instances';
import { executeOrder } from './cell-orders';
import { availableEngines, createEngineRegistry, type EngineRegistry } from './engine-registry';
import type { Executor } from './executor';
import { DockerExecutor } from './executor-docker';
import { ProcessExecutor } from './executor-process';
import type { NetworkFencer } from './fencer-network';
import type { PortRange } from './port-allocator';
import type { EngineTlsFiles } from './engine-tls';
import { availableSidecars } from './sidecar';
import { SnapshotStore } from './snapshot-store';
import { TransferServer, loadTransferTls } from './volume-transfer';
import { closePgConnections } from './pg-client';

export interface CellAgentOptions {
  name: string;
  zone: string;
  capacityMb: number;
  /** @default process.env.SF_REDIS_URL ?? 'redis://127.0.0.1:6379' */
  redisUrl?: string;
  /** Prefix of every Redis key; must match control's. @default process.env.SF_KEY_PREFIX ?? 'sf:' */
  keyPrefix?: string;
  /** @default /var/lib/service-foundry/cells/{name} as root, else ~/.service-foundry/cells/{name} */
  dataDir?: string;
  /** Address instances bind to. @default '127.0.0.1' */
  listenHost?: string;
  /** Address reported for routers and replicas. @default listenHost */
  advertiseHost?: string;
  /** @default 20000-20999 */
  portRange?: PortRange;
  /**
   * The longest time between two heartbeats; a failed one is tried again a third of this later.
   * @default half of heartbeatTtlMs (1500)
   */
  heartbeatMs?: number;
  /** @default 3000 */
  heartbeatTtlMs?: number;
  /** Probe health and converge local instances to the desired state last read. @default 2000 */
  reconcileMs?: number;
  /**
   * Re-read the desired hash this often without a notification. Control notifies after every
   * change, so the poll only covers a lost message; while the notify subscription is down the
   * hash is re-read every reconcileMs instead. @default 30000
   */
  desiredPollMs?: number;
  /** Interval between two disk-usage measurements of every volume (docs/volumes.md). @default 15000 */
  volumeCheckMs?: number;
  /** Bound of the commit check on primaries; past it a primary is reported degraded. @default 2000 */
  commitCheckTimeoutMs?: number;
  /** Stop engines when the agent exits; by default they keep running and are re-adopted. @default false */
  stopInstancesOnExit?: boolean;
  /** Executor of specs that name none (`--executor`). @default 'process' */
  defaultExecutor?: ExecutorKind;
  /** Networks trusted by postgres besides loopback (docs/cells.md, Security). @default [] */
  trustCidrs?: string[];
  /** Executables `tcp` instances may run (`--tcp-allow`); empty = any. @default [] */
  tcpAllow?: string[];
  /**
   * The cell's certificate from the platform CA (`sf cell --ca-dir`, docs/tls.md): PostgreSQL
   * instances, and Redis instances whose spec asks for TLS, serve TLS with it and replicate over
   * TLS verified against the CA. @default none
   */
  tls?: EngineTlsFiles;
  engines?: EngineRegistry;
  executors?: Partial<Record<ExecutorKind, Executor>>;
  fencer?: NetworkFencer;
  logger?: Logger;
  /**
   * Where `/metrics` and `/health` answer (`sf cell --metrics-listen`); port 0 picks one.
   * `/metrics` takes `token` as a bearer token. @default none
   */
  metricsListen?: { host: string; port: number; token: string };
  /** Port of the cell-to-cell copy listener (snapshots), on listenHost; 0 picks one. @default 0 */
  transferPort?: number;
}

export { DEFAULT_CELL_AGENT_OPTIONS } from './cell-agent-defaults';
import { DEFAULT_CELL_AGENT_OPTIONS, defaultHeartbeatMs } from './cell-agent-defaults';

/**
 * `/var/lib/service-foundry/cells/NAME` for root (whose home is closed to the `postgres` user the
 * engines run as), `~/.service-foundry/cells/NAME` otherwise.
 */
export function defaultCellDataDir(name: string): string {
  const base = process.getuid?.() === 0 ? '/var/lib/service-foundry' : path.join(homedir(), '.service-foundry');
  return path.join(base, 'cells', name);
}

const FULL_REPORT_MS = 10_000;

/**
 * How long one BRPOP waits for an order. An order is delivered the moment it is pushed whatever
 * this is; a timeout only costs the store a command, so it is long. stop() disconnects the
 * connection, which ends a wait at once.
 */
const ORDER_WAIT_S = 10;

/** The scalar options, checked once at construction; errors name the field. */
const cellAgentOptionsSchema = z
  .object({
    name: z
      .string()
      .regex(
        /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/,
        'must be letters, digits, _ . - (max 64), starting with a letter or digit',
      ),
    zone: z.string().min(1, 'must not be empty'),
    capacityMb: z.number().int().min(1),
    redisUrl: z
      .string()
      .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
      .optional(),
    keyPrefix: z.string().max(64).optional(),
    listenHost: z.string().min(1).optional(),
    advertiseHost: z.string().min(1).optional(),
    portRange: z
      .object({ from: z.number().int().min(1).max(65535), to: z.number().int().min(1).max(65535) })
      .refine((r) => r.from <= r.to, 'from must not exceed to')
      .optional(),
    heartbeatMs: z.number().int().min(50).optional(),
    heartbeatTtlMs: z.number().int().min(100).optional(),
    reconcileMs: z.number().int().min(100).optional(),
    desiredPollMs: z.number().int().min(100).optional(),
    commitCheckTimeoutMs: z.number().int().min(100).optional(),
    volumeCheckMs: z.number().int().min(100).optional(),
  })
  .refine(
    (o) =>
      (o.heartbeatTtlMs ?? DEFAULT_CELL_AGENT_OPTIONS.heartbeatTtlMs) >
      (o.heartbeatMs ?? defaultHeartbeatMs(o.heartbeatTtlMs ?? DEFAULT_CELL_AGENT_OPTIONS.heartbeatTtlMs)),
    {
      message: 'must be longer than heartbeatMs, or the registration expires between heartbeats',
      path: ['heartbeatTtlMs'],
    },
  );

function validateOptions(options: CellAgentOptions): void {
  const parsed = cellAgentOptionsSchema.safeParse(options);
  if (parsed.success) return;
  throw schemaError(parsed.error, ErrorCode.InvalidOption);
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

function waitReady(conn: Redis): Promise<void> {
  if (conn.status === 'ready') return Promise.resolve();
  return new Promise((resolve) => conn.once('ready', () => resolve()));
}

export class CellAgent {
  readonly name: string;
  readonly dataDir: string;
  private readonly opts: CellAgentOptions &
    typeof DEFAULT_CELL_AGENT_OPTIONS & { advertiseHost: string; keyPrefix: string; heartbeatMs: number };
  private readonly log: Logger;
  /** The last report of each instance, for metrics. */
  private readonly reports = new Map<string, ActualInstance>();
  private metricsServer: { port: number; close(): Promise<void> } | undefined;
  readonly metrics: CellMetrics;
  /** The last state logged per instance, so only changes are logged. */
  private readonly lastLogged = new Map<string, string>();
  private readonly engines: EngineRegistry;
  private readonly executors: Partial<Record<ExecutorKind, Executor>>;
  private redis: Redis | undefined;
  private sub: Redis | undefined;
  private orderConn: Redis | undefined;
  private instances: CellInstances | undefined;
  private timers: NodeJS.Timeout[] = [];
  private running = false;
  private startedAt = 0;
  /** When the last heartbeat that Redis acknowledged was sent: the cell's lease runs from there. */
  private heartbeatSentAt = 0;
  /** One heartbeat at a time: a stalled one is not joined by others queued behind it. */
  private heartbeatRun: Promise<boolean> | undefined;
  /** The early try after a failed heartbeat, if one is due. */
  private heartbeatRetry: NodeJS.Timeout | undefined;
  private reconciling: Promise<void> | undefined;
  private measuring: Promise<void> | undefined;
  private reconcileAgain = false;
  /** A notification (or a reconnect) asked for the desired hash to be read again. */
  private desiredStale = true;
  /** The desired hash as last read, and when (the poll re-reads it every desiredPollMs). */
  private desiredRaw: Record<string, string> = {};
  private desiredReadAt = 0;
  private availableExecutors: ExecutorKind[] = [];
  private invalidSpecs = new Map<string, string>();
  private stateLost = false;
  private registered = false;
  private readonly orderChains = new Map<string, Promise<void>>();
  private readonly pendingActions = new Set<Promise<void>>();
  private availableEngineKinds: EngineKind[] = [];
  private availableSidecarKinds: SidecarKind[] = [];
  private readonly keys: KeyLayout;
  /** instanceId -> the last report written, without its time. */
  private readonly written = new Map<string, string>();
  private readonly snapshots: SnapshotStore;
  private readonly transfer: TransferServer;
  private snapshotIds: string[] = [];

  constructor(options: CellAgentOptions) {
    validateOptions(options);
    const listenHost = options.listenHost ?? DEFAULT_CELL_AGENT_OPTIONS.listenHost;
    this.opts = withDefaults(
      {
        ...DEFAULT_CELL_AGENT_OPTIONS,
        redisUrl: process.env.SF_REDIS_URL ?? DEFAULT_CELL_AGENT_OPTIONS.redisUrl,
        keyPrefix: process.env.SF_KEY_PREFIX ?? DEFAULT_KEY_PREFIX,
      },
      {
        ...options,
        listenHost,
        advertiseHost: options.advertiseHost ?? listenHost,
        heartbeatMs:
          options.heartbeatMs ??
          defaultHeartbeatMs(options.heartbeatTtlMs ?? DEFAULT_CELL_AGENT_OPTIONS.heartbeatTtlMs),
      },
    ) as CellAgent['opts'];
    this.keys = keyLayout(this.opts.keyPrefix);
    this.name = options.name;
    this.dataDir = path.resolve(options.dataDir ?? defaultCellDataDir(options.name));
    this.log = options.logger ?? createLogger('cell', { base: { cell: options.name }, destination: 'stderr' });
    this.metrics = new CellMetrics({
      reports: () => this.reports.values(),
      capacityMb: options.capacityMb,
      usedMb: () => this.instances?.usedMb() ?? 0,
    });
    this.engines =
      options.engines ??
      createEngineRegistry({
        redis: options.tls ? { tls: options.tls } : {},
        postgres: { trustCidrs: options.trustCidrs, ...(options.tls ? { tls: options.tls } : {}) },
        tcp: { allow: options.tcpAllow },
      });
    const common = {
      dataDir: this.dataDir,
      portRange: this.opts.portRange,
      listenHost,
      advertiseHost: this.opts.advertiseHost,
      engines: this.engines,
      ...(options.tls ? { tls: options.tls } : {}),
    };
    this.executors = options.executors ?? { process: new ProcessExecutor(common), docker: new DockerExecutor(common) };
    this.snapshots = new SnapshotStore(this.dataDir);
    this.transfer = new TransferServer(listenHost);
  }

  get logger(): Logger {
    return this.log;
  }

  async start(): Promise<void> {
    await mkdir(this.dataDir, { recursive: true });
    this.startedAt = Date.now();
    if (this.opts.tls) this.transfer.tls = await loadTransferTls(this.opts.tls);
    await this.transfer.listen(this.opts.transferPort ?? 0);
    this.snapshotIds = await this.snapshots.list();
    if (this.opts.metricsListen)
      this.metricsServer = await startCellMetricsServer(
        this.metrics,
        this.opts.metricsListen.host,
        this.opts.metricsListen.port,
        this.opts.metricsListen.token,
      );
    // ioredis reconnects forever; the cell waits for Redis rather than exiting, so `sf up` and
    // service managers may start it before Redis is up.
    const retryStrategy = (attempt: number): number => Math.min(100 * attempt, 2_000);
    this.redis = createRedis(this.opts.redisUrl, { maxRetriesPerRequest: 1, retryStrategy });
    this.sub = createRedis(this.opts.redisUrl, { maxRetriesPerRequest: null, retryStrategy });
    this.orderConn = createRedis(this.opts.redisUrl, { maxRetriesPerRequest: null, retryStrategy });
    let lastWarn = 0;
    for (const conn of [this.redis, this.sub, this.orderConn]) {
      conn.on('error', (err: Error) => {
        if (Date.now() - lastWarn < 5_000) return;
        lastWarn = Date.now();
        this.log.warn({ err: err.message, redis: redactRedisUrl(this.opts.redisUrl) }, 'redis unreachable; retrying');
      });
    }
    await Promise.all([this.redis, this.sub, this.orderConn].map(waitReady));
    // After an outage the registration may have expired and reports may be gone (a Redis
    // without persistence restarts empty): re-register and re-report everything.
    this.redis.on('ready', () => void this.afterReconnect());

    this.availableExecutors = [];
    for (const [kind, executor] of Object.entries(this.executors) as Array<[ExecutorKind, Executor | undefined]>) {
      if (!executor) continue;
      const availability = await executor.available();
      if (availability.ok) this.availableExecutors.push(kind);
      else this.log.info({ executor: kind, reason: availability.reason }, 'executor unavailable');
    }
    const usable = Object.fromEntries(this.availableExecutors.map((k) => [k, this.executors[k]]));
    this.availableEngineKinds = await availableEngines(this.engines);
    this.availableSidecarKinds = await availableSidecars();

    this.instances = new CellInstances({
      cell: this.name,
      dataDir: this.dataDir,
      advertiseHost: this.opts.advertiseHost,
      executors: usable,
      engines: this.engines,
      redis: this.redis,
      keys: this.keys,
      boot: this.startedAt,
      cellLeaseCurrent: () => Date.now() - this.heartbeatSentAt < this.opts.heartbeatTtlMs,
      report: (id, actual) => void this.report(id, actual),
      commitCheckTimeoutMs: this.opts.commitCheckTimeoutMs,
      defaultExecutor: this.opts.defaultExecutor,
      snapshots: this.snapshots,
      onTlsRefresh: (id, error) =>
        error
          ? this.log.warn({ instance: id, err: error }, 'renewed certificate not loaded')
          : this.log.info({ instance: id }, 'renewed certificate loaded'),
    });
    await this.instances.load();
    await this.clearStaleReports();

    this.running = true;
    await this.heartbeat();
    await this.publish({ type: 'registered', cell: this.name, record: this.record() });
    this.timers.push(setInterval(() => void this.heartbeat(), this.opts.heartbeatMs));
    this.timers.push(setInterval(() => this.requestReconcile(), this.opts.reconcileMs));
    // Reports are written on change; a periodic full report repairs anything whose write failed.
    this.timers.push(setInterval(() => this.instances?.reportAll(), FULL_REPORT_MS));
    this.timers.push(setInterval(() => void this.instances?.probe().catch(() => undefined), this.opts.reconcileMs));
    this.timers.push(setInterval(() => void this.measureVolumes(), this.opts.volumeCheckMs));
    void this.measureVolumes();

    await this.sub.subscribe(this.keys.cell(this.name).notify);
    this.sub.on('message', (_channel: string, message: string) => {
      if (message === NOTIFY_DESIRED) this.requestReconcile(true);
    });
    // Notifications published while the subscription was down are lost: read the hash again.
    this.sub.on('ready', () => this.requestReconcile(true));
    this.requestReconcile(true);
    void this.orderLoop();
    if (!isLoopback(this.opts.listenHost) && !(this.opts.trustCidrs ?? []).length) {
      this.log.warn(
        { listenHost: this.opts.listenHost },
        'postgres trusts loopback only: replicas on other hosts need --trust-cidr for their network',
      );
    }
    this.log.info(
      {
        dataDir: this.dataDir,
        host: this.opts.advertiseHost,
        executors: this.availableExecutors,
        engines: this.availableEngineKinds,
        sidecars: this.availableSidecarKinds,
        instances: this.instances.summary(),
      },
      'cell registered',
    );
  }

  /** Deregisters; instances keep running (re-adopted next start) unless stopInstancesOnExit. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.heartbeatRetry) clearTimeout(this.heartbeatRetry);
    this.heartbeatRetry = undefined;
    await this.reconciling;
    await Promise.all([...this.orderChains.values(), ...this.pendingActions, this.measuring]);
    await this.instances?.shutdown(this.opts.stopInstancesOnExit);
    closePgConnections();
    try {
      await this.redis?.del(this.keys.cell(this.name).registration);
      await this.publish({ type: 'deregistered', cell: this.name });
    } catch (err) {
      this.log.warn({ err: errorMessageOf(err) }, 'deregistration failed; the key expires by TTL');
    }
    this.orderConn?.disconnect();
    this.sub?.disconnect();
    await this.redis?.quit().catch(() => undefined);
    await this.metricsServer?.close();
    await this.transfer.close();
  }

  /** The port `/metrics` answers on, once started with `metricsListen`. */
  get metricsPort(): number | undefined {
    return this.metricsServer?.port;
  }

  /** One measurement at a time: a slow `du` on a big volume never piles up behind itself. */
  private measureVolumes(): Promise<void> {
    if (!this.measuring)
      this.measuring = (this.instances?.measureVolumes() ?? Promise.resolve())
        // The cell record (disk use, full volumes) follows the reports at once, not a beat later.
        .then(async () => {
          await this.heartbeat();
        })
        .catch((err: unknown) => this.log.warn({ err: errorMessageOf(err) }, 'volume measurement failed'))
        .finally(() => (this.measuring = undefined));
    return this.measuring;
  }

  record(): CellRecord {
    return {
      name: this.name,
      zone: this.opts.zone,
      capacityMb: this.opts.capacityMb,
      usedMb: this.instances?.usedMb() ?? 0,
      ...(this.instances?.diskUsedMb() !== undefined ? { diskUsedMb: this.instances.diskUsedMb() } : {}),
      volumesFull: this.instances?.fullVolumes() ?? [],
      host: this.opts.advertiseHost,
      executors: this.availableExecutors,
      engines: this.availableEngineKinds,
      sidecars: this.availableSidecarKinds,
      portRange: this.opts.portRange,
      instances: this.instances?.count() ?? 0,
      startedAt: this.startedAt,
      heartbeatAt: Date.now(),
      heartbeatTtlMs: this.opts.heartbeatTtlMs,
      ...(this.metricsServer && this.opts.metricsListen ? { metrics: this.metricsAddress() } : {}),
      ...(this.transfer.port ? { transfer: { host: this.opts.advertiseHost, port: this.transfer.port } } : {}),
      snapshots: this.snapshotIds,
    };
  }

  /** A wildcard listener is reached at the cell's advertised address. */
  private metricsAddress(): { host: string; port: number } {
    const listen = this.opts.metricsListen?.host ?? '127.0.0.1';
    const host = listen === '0.0.0.0' || listen === '::' ? this.opts.advertiseHost : listen;
    return { host, port: this.metricsServer?.port ?? 0 };
  }

  private async afterReconnect(): Promise<void> {
    await this.heartbeat();
    this.reportEverything();
  }

  /**
   * `SADD sf:cells NAME` answering 1 after this cell registered means Redis lost control's state
   * (nothing ever removes a cell from that set). Its empty desired hash then means "unknown", not
   * "stop everything": the cell keeps its instances until control writes desired state again.
   * Only the heartbeat asks (when it writes a missing registration), and a reconcile that finds an
   * empty hash waits for a beat, so the answer is never missed.
   */
  private noteRegistration(added: number): void {
    if (added === 1 && this.registered) {
      // The cell set forgot this cell: the store was wiped or restarted empty, and this cell's
      // reports went with it. Control rebuilds routes from reports, so they are sent again now,
      // not at the next periodic full report up to 10 s later.
      this.reportEverything();
      this.instances?.reclaimLeases();
      if ((this.instances?.count() ?? 0) > 0 && !this.stateLost) {
        this.stateLost = true;
        this.log.warn('control state in Redis looks wiped; keeping instances until desired state is written again');
      }
    }
    this.registered = true;
  }

  /**
   * At rest one command: an EVALSHA that rewrites the registration if it still exists. A missing
   * one (first start, expired while the cell was cut off, or a store that lost everything) is
   * written again, after the floors of the cell's primaries were checked, and the cell set asked,
   * whose answer tells a wiped store from an expiry (protocol/cell-heartbeat.ts, noteRegistration).
   */
  private heartbeat(): Promise<boolean> {
    if (!this.running || !this.redis) return Promise.resolve(false);
    // One at a time: a caller during a beat waits for that beat (and sees what it learned).
    this.heartbeatRun ??= this.beat().finally(() => {
      this.heartbeatRun = undefined;
    });
    return this.heartbeatRun;
  }

  /** One heartbeat; true when the cell is registered after it. */
  private async beat(): Promise<boolean> {
    const redis = this.redis as Redis;
    const sentAt = Date.now();
    // A link that went down leaves the connection silently stalled, and what was queued on it
    // waits for TCP's retransmission backoff (seconds) after the link is back: a heartbeat that
    // has not returned within the TTL drops the connection, so the next one starts afresh.
    const stalled = setTimeout(() => redis.disconnect(true), this.opts.heartbeatTtlMs);
    try {
      const res = await heartbeatCell(
        redis,
        this.keys,
        this.name,
        JSON.stringify(this.record()),
        this.opts.heartbeatTtlMs,
        this.instances?.leasedPrimaries() ?? [],
      );
      if (!res.registered) {
        // The registration had expired and control fenced some of this cell's primaries
        // meanwhile: they are shot first; the next heartbeat registers the cell again.
        this.log.warn(
          { instances: res.deposed.map((d) => d.instanceId) },
          'cut off from the store past the TTL, and primaries were fenced meanwhile: stopping them before registering again',
        );
        await this.instances?.shootFencedWhileAway(res.deposed);
        this.retryHeartbeat();
        return false;
      }
      // A heartbeat that took long, or the first after a gap, means the cell was cut off from
      // the store for a while: every claim is checked again. The gap is two periods, and never
      // more than two thirds of the TTL (2 s at the defaults, as with the 1 s beat), so a longer
      // period does not let a longer cut go unchecked.
      const gapMs = Math.min(2 * this.opts.heartbeatMs, (2 * this.opts.heartbeatTtlMs) / 3);
      const gap = Date.now() - this.heartbeatSentAt > gapMs;
      if (gap && this.heartbeatSentAt > 0) this.instances?.verifyLeases();
      this.heartbeatSentAt = sentAt;
      this.noteRegistration(res.added);
      return true;
    } catch (err) {
      this.log.warn({ err: errorMessageOf(err) }, 'heartbeat failed');
      this.retryHeartbeat();
      return false;
    } finally {
      clearTimeout(stalled);
    }
  }

  /**
   * A failed beat is tried again a third of a period later, not a period later: with the period
   * half the TTL, waiting a whole period would leave the registration one failed beat from
   * expiring, where the old 1 s beat under a 3 s TTL had two to spare.
   */
  private retryHeartbeat(): void {
    if (!this.running || this.heartbeatRetry) return;
    this.heartbeatRetry = setTimeout(
      () => {
        this.heartbeatRetry = undefined;
        void this.heartbeat();
      },
      Math.max(10, Math.floor(this.opts.heartbeatMs / 3)),
    );
  }

  /**
   * Coalesces reconcile requests: one run at a time, one more if asked during a run. `fresh`
   * (a notification, a reconnect) makes that run read the desired hash again.
   */
  requestReconcile(fresh = false): void {
    if (!this.running) return;
    if (fresh) this.desiredStale = true;
    if (this.reconciling) {
      this.reconcileAgain = true;
      return;
    }
    this.reconciling = this.reconcile()
      .catch((err) => this.log.warn({ err: errorMessageOf(err) }, 'reconcile failed'))
      .finally(() => {
        this.reconciling = undefined;
        if (this.reconcileAgain) {
          this.reconcileAgain = false;
          this.requestReconcile();
        }
      });
  }

  /**
   * The desired hash is read on a notification, every desiredPollMs (a lost message), every
   * reconcileMs while the subscription is down or the store looked wiped, and after a failed
   * read; otherwise the last read is converged to again, which costs the store nothing.
   */
  private desiredDue(): boolean {
    return (
      this.desiredStale ||
      this.stateLost ||
      this.sub?.status !== 'ready' ||
      Date.now() - this.desiredReadAt >= this.opts.desiredPollMs
    );
  }

  private async reconcile(): Promise<void> {
    if (!this.redis || !this.instances) return;
    if (this.desiredDue()) {
      this.desiredStale = false;
      const readAt = Date.now();
      try {
        const raw = await this.redis.hgetall(this.keys.cell(this.name).desired);
        // An empty hash is believed only after a heartbeat: in a store that lost its state the
        // registration is gone too, and the beat that writes it again learns from the cell set
        // that the store was wiped (noteRegistration). Awaiting the beat (or the one under way)
        // orders that answer before this check; until a beat succeeds nothing is cached, so an
        // empty hash is never converged to (stopping every instance) on a guess.
        if (Object.keys(raw).length === 0 && this.instances.count() > 0 && !(await this.heartbeat()))
          throw new Error('an empty desired state could not be confirmed: the heartbeat failed');
        this.desiredRaw = raw;
      } catch (err) {
        this.desiredStale = true;
        throw err;
      }
      this.desiredReadAt = readAt;
    }
    const raw = this.desiredRaw;
    if (this.stateLost) {
      if (Object.keys(raw).length === 0) return;
      this.stateLost = false;
    }
    const desired = new Map<string, InstanceSpec>();
    const invalid = new Map<string, string>();
    for (const [id, json] of Object.entries(raw)) {
      const parsed = safeParseSpec(json);
      if (parsed.ok && parsed.spec.instanceId === id) desired.set(id, parsed.spec);
      else
        invalid.set(
          id,
          parsed.ok ? `instanceId '${parsed.spec.instanceId}' does not match its hash field` : parsed.message,
        );
    }
    // Report each invalid spec once, and withdraw the report once it is fixed or removed.
    for (const [id, message] of invalid)
      if (this.invalidSpecs.get(id) !== message) this.reportInvalid(id, message, raw[id] ?? '');
    for (const id of this.invalidSpecs.keys()) {
      if (!invalid.has(id) && !this.instances.ids().includes(id)) void this.report(id, null);
    }
    this.invalidSpecs = invalid;
    // Not awaited: a long start (a base backup of a large database) must not hold back the next
    // pass, which handles other instances; per-instance states keep passes from colliding.
    const actions = this.instances
      .reconcile(desired)
      .catch((err) => this.log.warn({ err: errorMessageOf(err) }, 'reconcile action failed'));
    this.pendingActions.add(actions);
    void actions.finally(() => this.pendingActions.delete(actions));
  }

  /**
   * An invalid spec still gets a report, so control sees why nothing runs. Fields the spec got
   * right are echoed; the rest are neutral placeholders (only `state` and `lastError` matter).
   */
  private reportInvalid(instanceId: string, message: string, raw: string): void {
    this.log.warn({ instanceId, message }, 'invalid desired spec');
    let loose: Record<string, unknown> = {};
    try {
      const value: unknown = JSON.parse(raw);
      if (value && typeof value === 'object') loose = value as Record<string, unknown>;
    } catch {
      // Not JSON: nothing to echo.
    }
    const pick = <T>(key: string, ok: (v: unknown) => boolean, fallback: T): T =>
      ok(loose[key]) ? (loose[key] as T) : fallback;
    const actual: ActualInstance = {
      instanceId,
      service: pick('service', (v) => typeof v === 'string', ''),
      engine: pick('engine', (v) => ENGINE_KINDS.includes(v as EngineKind), 'tcp'),
      executor: pick('executor', (v) => v === 'process' || v === 'docker', 'process'),
      state: 'failed',
      generation: pick('generation', Number.isInteger, 0),
      pid: null,
      host: this.opts.advertiseHost,
      port: null,
      role: pick('role', (v) => v === 'primary' || v === 'replica', 'replica'),
      epoch: pick('epoch', Number.isInteger, 0),
      position: null,
      positionValue: null,
      healthy: null,
      leaseHeld: null,
      volumePresent: false,
      volumeSizeMb: 0,
      lastError: { code: ErrorCode.InvalidInstanceSpec, message },
      updatedAt: Date.now(),
    };
    void this.report(instanceId, actual);
  }

  private async report(instanceId: string, actual: ActualInstance | null): Promise<void> {
    this.logTransition(instanceId, actual);
    if (actual) this.reports.set(instanceId, actual);
    else this.reports.delete(instanceId);
    if (!this.redis) return;
    // Deltas only: a report equal to the last one written (its time aside) is not sent again, so
    // the periodic full report costs nothing at rest; one that failed is retried by it.
    const text = actual ? JSON.stringify({ ...actual, updatedAt: 0 }) : null;
    if (text !== null && this.written.get(instanceId) === text) return;
    this.written.delete(instanceId);
    try {
      if (actual) await this.redis.hset(this.keys.cell(this.name).actual, instanceId, JSON.stringify(actual));
      else await this.redis.hdel(this.keys.cell(this.name).actual, instanceId);
      await this.publish({ type: 'actual', cell: this.name, instanceId, actual });
      if (text !== null) this.written.set(instanceId, text);
    } catch (err) {
      this.log.warn({ instanceId, err: errorMessageOf(err) }, 'report failed');
    }
  }

  /**
   * Decisions an operator looks for in the cell's log, not only in `sf service` (a refused
   * primary start, an exit, a degraded primary): each change of an instance's state or error is
   * one line, an error at warn level. Health flaps and positions are not logged.
   */
  private logTransition(instanceId: string, actual: ActualInstance | null): void {
    const before = this.lastLogged.get(instanceId);
    const now = actual
      ? `${actual.state}|${actual.role}|${actual.epoch}|${actual.lastError?.message ?? ''}|${actual.degraded ?? ''}`
      : 'forgotten';
    if (before === now) return;
    this.lastLogged.set(instanceId, now);
    if (!actual) {
      this.lastLogged.delete(instanceId);
      this.log.info({ instanceId }, 'instance forgotten');
      return;
    }
    const fields = { instanceId, service: actual.service, state: actual.state, role: actual.role, epoch: actual.epoch };
    if (actual.degraded) this.log.warn(fields, `instance ${instanceId} degraded: ${actual.degraded}`);
    else if (actual.lastError)
      this.log.warn({ ...fields, code: actual.lastError.code }, `instance ${instanceId}: ${actual.lastError.message}`);
    else this.log.info(fields, `instance ${instanceId} ${actual.state} as ${actual.role} (epoch ${actual.epoch})`);
  }

  /** Every report written again, whether it changed or not (the store may have lost them). */
  private reportEverything(): void {
    this.written.clear();
    this.instances?.reportAll();
  }

  /** Entries for instances this cell no longer knows (volume gone) would mislead control. */
  private async clearStaleReports(): Promise<void> {
    if (!this.redis || !this.instances) return;
    const known = new Set(this.instances.ids());
    const reported = await this.redis.hkeys(this.keys.cell(this.name).actual);
    const stale = reported.filter((id) => !known.has(id));
    if (stale.length) await this.redis.hdel(this.keys.cell(this.name).actual, ...stale);
  }

  private async publish(event: CellEvent): Promise<void> {
    await this.redis?.publish(this.keys.cellEvents, JSON.stringify(event));
  }

  private async orderLoop(): Promise<void> {
    while (this.running && this.orderConn) {
      let popped: [string, string] | null;
      try {
        popped = await this.orderConn.brpop(this.keys.cell(this.name).orders, ORDER_WAIT_S);
      } catch (err) {
        if (!this.running) return;
        this.log.warn({ err: errorMessageOf(err) }, 'order queue read failed');
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      if (popped) this.dispatchOrder(popped[1]);
    }
  }

  /**
   * Orders for one instance run in arrival order, orders for different instances concurrently:
   * a fence must not wait behind another instance's volume copy or a slow promote.
   */
  private dispatchOrder(json: string): void {
    let key = '*';
    try {
      const order = JSON.parse(json) as { instanceId?: unknown; snapshotId?: unknown };
      // A snapshot copy may take minutes: it must not hold back cell-wide orders (network fences).
      if (typeof order.instanceId === 'string') key = order.instanceId;
      else if (typeof order.snapshotId === 'string') key = `snapshot:${order.snapshotId}`;
    } catch {
      // Handled (and reported) by handleOrder.
    }
    const previous = this.orderChains.get(key) ?? Promise.resolve();
    const next = previous
      .then(() => this.handleOrder(json))
      .catch((err) => this.log.warn({ err: errorMessageOf(err) }, 'order failed'));
    this.orderChains.set(key, next);
    void next.finally(() => {
      if (this.orderChains.get(key) === next) this.orderChains.delete(key);
    });
  }

  private async handleOrder(json: string): Promise<void> {
    let result: OrderResult;
    let parsedJson: unknown;
    try {
      parsedJson = JSON.parse(json);
    } catch {
      parsedJson = undefined;
    }
    const parsed = orderSchema.safeParse(parsedJson);
    if (!parsed.success) {
      const orderId =
        typeof (parsedJson as { orderId?: unknown })?.orderId === 'string'
          ? (parsedJson as { orderId: string }).orderId
          : `invalid-${Date.now()}`;
      result = {
        orderId,
        type: 'invalid',
        cell: this.name,
        ok: false,
        error: {
          code: ErrorCode.UnknownOrder,
          message: `invalid order: ${schemaError(parsed.error, ErrorCode.UnknownOrder, 'order').message}`,
        },
        finishedAt: Date.now(),
      };
    } else {
      // A credentials order carries passwords: log what it is, never what it holds.
      const { credentials, ...loggable } = { credentials: undefined, ...parsed.data };
      this.log.info(
        { order: credentials ? { ...loggable, credentialsVersion: credentials.version } : loggable },
        'order',
      );
      const started = performance.now();
      // The running mark: a sender whose bound passed waits on while it is renewed (a slow
      // engine under load), and gives up once it lapses (this cell died holding the order).
      const runningKey = this.keys.orderRunning(parsed.data.orderId);
      const mark = (): void =>
        void this.redis?.set(runningKey, this.name, 'PX', ORDER_RUNNING_TTL_MS).catch(() => undefined);
      mark();
      const marking = setInterval(mark, Math.floor(ORDER_RUNNING_TTL_MS / 3));
      result = await executeOrder(parsed.data, {
        cell: this.name,
        dataDir: this.dataDir,
        instances: this.instances as CellInstances,
        fencer: this.opts.fencer,
        snapshots: this.snapshots,
        transfer: this.transfer,
        progress: (id, p) =>
          void this.publish({
            type: 'transfer-progress',
            cell: this.name,
            id,
            bytes: p.bytes,
            totalBytes: p.totalBytes,
            at: Date.now(),
          }).catch(() => undefined),
      }).finally(() => clearInterval(marking));
      if (parsed.data.type.includes('snapshot')) {
        this.snapshotIds = await this.snapshots.list();
        await this.heartbeat();
      }
      this.metrics.observeOrder(parsed.data.type, result.ok, (performance.now() - started) / 1000);
      if (result.ok && typeof result.data?.bytes === 'number' && parsed.data.type.startsWith('import-'))
        this.metrics.observeCopied(result.data.bytes);
    }
    try {
      await this.redis?.set(this.keys.orderResult(result.orderId), JSON.stringify(result), 'PX', ORDER_RESULT_TTL_MS);
      await this.redis?.del(this.keys.orderRunning(result.orderId));
      await this.publish({ type: 'order-result', cell: this.name, result });
    } catch (err) {
      this.log.warn({ orderId: result.orderId, err: errorMessageOf(err) }, 'order result not stored');
    }
  }
}

function safeParseSpec(json: string): { ok: true; spec: InstanceSpec } | { ok: false; message: string } {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return { ok: false, message: 'desired spec is not JSON' };
  }
  const parsed = instanceSpecSchema.safeParse(value);
  if (parsed.success) return { ok: true, spec: parsed.data };
  return { ok: false, message: schemaError(parsed.error, ErrorCode.InvalidInstanceSpec).message };
}
