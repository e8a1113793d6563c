/**
 * The cell ⇄ control protocol in Redis: key names, message shapes and their schemas.
 *
 * Ownership is strict so that no key has two writers:
 * - control writes `desired`, pushes `orders` and publishes on `notify`;
 * - the cell writes its registration key, `actual`, order results and publishes on `sf:cell-events`.
 *
 * Keys are in keys.ts and take the installation's prefix (`sf:` below).
 *
 * Flow: control HSETs an instance spec into `sf:cell:{name}:desired` and PUBLISHes `desired` on
 * `sf:cell:{name}:notify`; the cell re-reads the whole hash (it also polls, so a lost message only
 * costs latency), starts what is new, stops what disappeared, and reports every change in
 * `sf:cell:{name}:actual` plus an `actual` event on `sf:cell-events`. One-shot actions (promote,
 * repoint, fence, copy a volume, ...) are orders: control LPUSHes an `Order` onto
 * `sf:cell:{name}:orders`, the cell BRPOPs it, executes it and writes `sf:order:{orderId}`
 * (kept for ORDER_RESULT_TTL_MS) and publishes an `order-result` event. While it executes an
 * order it keeps `sf:order:{orderId}:running` (TTL ORDER_RUNNING_TTL_MS, renewed), so a sender
 * can tell an order in progress on a slow cell from one nobody runs. See docs/cells.md.
 */
import { z } from 'zod';

export const NOTIFY_DESIRED = 'desired';
export const ORDER_RESULT_TTL_MS = 3_600_000;
/** The running mark of an order lapses this long after its cell stopped renewing it (died). */
export const ORDER_RUNNING_TTL_MS = 5_000;

export const ENGINE_KINDS = ['redis', 'postgres', 'tcp'] as const;
export type EngineKind = (typeof ENGINE_KINDS)[number];
export const EXECUTOR_KINDS = ['process', 'docker'] as const;
export type ExecutorKind = (typeof EXECUTOR_KINDS)[number];
/**
 * Sidecars an instance may carry (its pod): processes or containers that share its network and
 * volume, start after it and stop with it. Each serves one engine.
 */
export const SIDECAR_KINDS = ['redis-exporter', 'postgres-exporter'] as const;
export type SidecarKind = (typeof SIDECAR_KINDS)[number];
/** The engine each sidecar serves. */
export const SIDECAR_ENGINES: Record<SidecarKind, EngineKind> = {
  'redis-exporter': 'redis',
  'postgres-exporter': 'postgres',
};
export type InstanceRole = 'primary' | 'replica';
export type Durability = 'sync' | 'async';
/**
 * How often an engine forces its writes to disk, apart from replication (docs/volumes.md):
 * `always` at every commit, `interval` about once a second, `off` when the OS decides.
 */
export const DISK_SYNC_MODES = ['always', 'interval', 'off'] as const;
export type DiskSync = (typeof DISK_SYNC_MODES)[number];

/**
 * The disk sync a spec without one gets: what `durability` alone meant before disk sync existed
 * (Redis: `appendfsync always` with sync, `everysec` with async; PostgreSQL flushed its WAL at
 * every commit either way).
 */
export function defaultDiskSync(durability: Durability, engine: EngineKind): DiskSync {
  return durability === 'sync' || engine === 'postgres' ? 'always' : 'interval';
}

/** Snapshot ids name directories on cells: `SERVICE-YYYYMMDDTHHMMSS-RANDOM`. */
export const SNAPSHOT_ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,127}$/;

const hostPortSchema = z.object({
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535),
});
export type HostPort = z.infer<typeof hostPortSchema>;

/** An engine user: Redis ACL user or PostgreSQL role. Names are safe in ACL rules and pg_hba. */
const engineUserSchema = z.object({
  username: z.string().regex(/^[a-z][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, _ or -, starting with a letter'),
  password: z.string().min(16).max(256),
});
export type EngineUser = z.infer<typeof engineUserSchema>;

/**
 * A service's credentials as its instances need them: `admin` is the platform's own
 * management user (health checks, promote, rewind), `replication` the one replicas connect as,
 * `users` the clients' (one per service key), `monitoring` the one exporter sidecars read metrics
 * as (absent in services created before it existed). `version` only grows; a cell applies a set
 * only when it is newer than the one it has.
 */
export const instanceCredentialsSchema = z.object({
  version: z.number().int().min(0),
  admin: engineUserSchema,
  replication: engineUserSchema,
  monitoring: engineUserSchema.optional(),
  users: z.array(engineUserSchema),
});
export type InstanceCredentials = z.infer<typeof instanceCredentialsSchema>;

export const instanceSpecSchema = z.object({
  /** Unique across the platform, e.g. `orders-db-0`; also the volume's directory name. */
  instanceId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, 'letters, digits, _ . - (max 128)'),
  service: z.string().min(1),
  engine: z.enum(ENGINE_KINDS),
  role: z.enum(['primary', 'replica']),
  /** Fencing token of the primary role; only grows (DESIGN.md). */
  epoch: z.number().int().min(0),
  /** Bumped by control to ask for a restart of a failed or stopped instance (cells never retry). */
  generation: z.number().int().min(0).default(0),
  /** A fixed port; when absent the cell picks one from its port range. */
  port: z.number().int().min(1).max(65535).optional(),
  durability: z.enum(['sync', 'async']).default('async'),
  /** How many replicas the service has: sync durability only waits for replicas that exist. */
  replicas: z.number().int().min(0).default(0),
  /** Absent: `defaultDiskSync(durability)`. Changes apply to a running engine without a restart. */
  diskSync: z.enum(DISK_SYNC_MODES).optional(),
  volume: z.object({ sizeMb: z.number().int().min(1) }),
  /** Required when role is replica: where the primary is reachable. */
  replicaOf: hostPortSchema.optional(),
  /** Executor to use; defaults to the cell's default (`process`). */
  executor: z.enum(EXECUTOR_KINDS).optional(),
  /** Sidecars started with the instance, each on a port of the cell's range (docs/cells.md, Pods). */
  sidecars: z.array(z.enum(SIDECAR_KINDS)).optional(),
  /** Limits from the service's plan; the docker executor makes them container limits. */
  resources: z
    .object({ memoryMb: z.number().int().min(16).optional(), cpus: z.number().positive().max(1024).optional() })
    .optional(),
  /** Engine `tcp` only: the command, with `{port}`, `{host}` and `{dataDir}` placeholders. */
  command: z.object({ file: z.string().min(1), args: z.array(z.string()).default([]) }).optional(),
  /** Primary lease renewal; absent = no lease kept for this instance. */
  lease: z.object({ ttlMs: z.number().int().min(500) }).optional(),
  /**
   * Engines redis and postgres: who may connect. Control always writes it; a spec without it
   * (written by hand) runs the engine without authentication, as older specs did.
   */
  credentials: instanceCredentialsSchema.optional(),
  /**
   * A new volume starts from this snapshot of the cell's snapshot store (docs/volumes.md,
   * Snapshots) instead of an empty data directory; ignored once the volume exists.
   */
  restoreFrom: z.object({ snapshotId: z.string().regex(SNAPSHOT_ID_PATTERN) }).optional(),
  /**
   * A new volume takes the data a move copied into this cell (`import-volume` with `final`
   * under this move id) instead of starting empty; ignored once the volume exists.
   */
  moveIn: z.object({ moveId: z.string().regex(SNAPSHOT_ID_PATTERN) }).optional(),
  /**
   * Engine redis: serve TLS only, with the cell's certificate from the platform CA (the service's
   * TLS policy is required or optional); ignored by a cell without a certificate. PostgreSQL
   * serves TLS whenever its cell has a certificate (docs/tls.md).
   */
  tls: z.boolean().optional(),
  /**
   * With `tls`: the service's policy is `optional`, so the router also relays plaintext clients,
   * and a PostgreSQL client that chose plaintext reaches the engine in plaintext (docs/tls.md,
   * Router to engine). A PostgreSQL engine then takes plaintext SQL (with a password) from the
   * trusted networks as well as from loopback; under `required` from loopback only.
   */
  tlsOptional: z.boolean().optional(),
  /**
   * Engine postgres: present this certificate (the service's, the one its route terminates
   * with) instead of the cell's, so a client's SCRAM channel binding (RFC 5929
   * `tls-server-end-point`, a hash of the certificate the client saw at the router) matches the
   * engine's certificate when the router re-encrypts (docs/tls.md, Router to engine). Files on the
   * cell's host, at the same path as on control's; replicas then verify their primary against the
   * service's name. Ignored by a cell without a certificate.
   */
  tlsCertificate: z
    .object({
      certFile: z.string().regex(/^\/[^\0]*$/, 'must be an absolute file path'),
      keyFile: z.string().regex(/^\/[^\0]*$/, 'must be an absolute file path'),
    })
    .strict()
    .optional(),
});
export type InstanceSpec = z.infer<typeof instanceSpecSchema>;
export type InstanceSpecInput = z.input<typeof instanceSpecSchema>;

export type ActualState = 'starting' | 'running' | 'failed' | 'stopping' | 'stopped' | 'fenced';

/** What the cell reports per instance in `sf:cell:{name}:actual`. */
export interface ActualInstance {
  instanceId: string;
  service: string;
  engine: EngineKind;
  executor: ExecutorKind;
  state: ActualState;
  /** The desired generation this state belongs to. */
  generation: number;
  pid: number | null;
  host: string;
  port: number | null;
  role: InstanceRole;
  epoch: number;
  /** Engine-native position: Redis replication offset, PostgreSQL LSN `X/Y`. */
  position: string | null;
  /** The same position as a decimal integer string, comparable with BigInt across instances. */
  positionValue: string | null;
  /**
   * A replica that has its first full copy and follows the primary's stream (engine position
   * `streaming`); absent or null when unknown or not a replica. A move waits for it.
   */
  streaming?: boolean | null;
  /** Last health check of a running instance (PING, `select 1`, TCP connect); null when not running. */
  healthy: boolean | null;
  /** true while the primary lease is held; null when no lease is kept. */
  leaseHeld: boolean | null;
  /** The volume directory exists on this cell (survives stop; removed by `delete-volume`). */
  volumePresent: boolean;
  volumeSizeMb: number;
  /** Measured disk usage of the volume (MiB, rounded up); null until first measured. */
  volumeUsedMb?: number | null;
  /** The volume's directory on the cell. */
  volumePath?: string;
  /** Usage reached sizeMb: the engine refuses writes (docs/volumes.md, per engine). */
  volumeFull?: boolean;
  lastError: { code: string; message: string } | null;
  /**
   * Why a running primary cannot commit writes right now (its cell's commit check: no sync
   * standby acknowledged in time, connections exhausted...); null or absent when it can.
   */
  degraded?: string | null;
  /** The instance's running sidecars and their ports; absent when it has none. */
  sidecars?: SidecarActual[];
  /** The engine serves TLS on `port`, with a certificate from the platform CA; absent: plaintext. */
  tls?: boolean;
  updatedAt: number;
}

/** A running sidecar as the cell reports it. */
export interface SidecarActual {
  kind: SidecarKind;
  port: number;
  pid: number | null;
  /** Serves HTTPS and requires a client certificate from the platform CA; absent: plain HTTP. */
  tls?: boolean;
}

export const orderSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('promote'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    epoch: z.number().int().min(0),
  }),
  z.object({ type: z.literal('repoint'), orderId: z.string().min(1), instanceId: z.string(), primary: hostPortSchema }),
  /** SIGKILL now; the instance stays down until control raises the desired generation. */
  z.object({ type: z.literal('fence'), orderId: z.string().min(1), instanceId: z.string() }),
  /** Cut this cell from peers (blackhole routes); `unfence-network` lifts it. */
  z.object({ type: z.literal('fence-network'), orderId: z.string().min(1), peers: z.array(z.string().min(1)) }),
  z.object({ type: z.literal('unfence-network'), orderId: z.string().min(1), peers: z.array(z.string().min(1)) }),
  /** Copy a stopped instance's volume to a directory (shared storage) for relocation. */
  z.object({
    type: z.literal('copy-volume'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    destination: z.string().min(1),
  }),
  /** Delete a stopped instance's volume and forget it. */
  z.object({ type: z.literal('delete-volume'), orderId: z.string().min(1), instanceId: z.string() }),
  /** Read the replication position now (control uses it to choose whom to promote). */
  z.object({ type: z.literal('position'), orderId: z.string().min(1), instanceId: z.string() }),
  /**
   * Measure one instance's volume now (`du`), as the periodic measurement does, and answer with
   * its bytes: a move reports what its new replica holds without waiting for the next round.
   */
  z.object({ type: z.literal('measure-volume'), orderId: z.string().min(1), instanceId: z.string() }),
  /**
   * Clean stop (the engine's durable shutdown); the instance stays desired and stopped until
   * control raises its generation. A planned switchover stops the old primary this way before it
   * promotes the new one, so that at no moment two instances accept writes.
   */
  z.object({ type: z.literal('stop'), orderId: z.string().min(1), instanceId: z.string() }),
  /**
   * A primary stops taking client writes for `timeoutMs` while it keeps serving its replicas
   * (Redis `CLIENT PAUSE WRITE`), and answers with its position, which no longer moves. A planned
   * switchover pauses the old primary instead of stopping it when the engine can: the same
   * guarantee (no second writer, an exact goal for the catch-up) without a shutdown in the
   * window. A `promote` of the same instance lifts the pause. Engines that cannot pause refuse it
   * with `SF_ERR_ENGINE_UNSUPPORTED`; control stops those instead.
   */
  z.object({
    type: z.literal('pause-writes'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    timeoutMs: z.number().int().min(100).max(3_600_000),
  }),
  /**
   * A write on a primary that must commit within `timeoutMs` (with sync durability: acknowledged
   * by a standby). Fails with the reason when it cannot (no sync standby, connections exhausted).
   */
  z.object({
    type: z.literal('commit-check'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    timeoutMs: z.number().int().min(100).max(600_000),
  }),
  /**
   * Apply these credentials to the running engine now (service keys created or revoked): users
   * added, changed or removed, a removed user's sessions ended. Ignored when the instance already
   * has a set with this version or a newer one.
   */
  z.object({
    type: z.literal('credentials'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    credentials: instanceCredentialsSchema,
  }),
  /**
   * A consistent copy of a running instance's data into the cell's snapshot store, taken with
   * the engine's own means (Redis BGSAVE, PostgreSQL pg_basebackup).
   */
  z.object({
    type: z.literal('snapshot'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    snapshotId: z.string().regex(SNAPSHOT_ID_PATTERN),
  }),
  /** Lets one peer cell read a snapshot over TCP with `token` for `ttlMs` (cell-to-cell copy). */
  z.object({
    type: z.literal('export-snapshot'),
    orderId: z.string().min(1),
    snapshotId: z.string().regex(SNAPSHOT_ID_PATTERN),
    token: z.string().min(16),
    ttlMs: z.number().int().min(1_000).max(86_400_000),
  }),
  /** Copies a snapshot from a peer cell's transfer port into this cell's store (resumable). */
  z.object({
    type: z.literal('import-snapshot'),
    orderId: z.string().min(1),
    snapshotId: z.string().regex(SNAPSHOT_ID_PATTERN),
    source: hostPortSchema,
    token: z.string().min(16),
  }),
  /** Lets one peer cell read an instance's data directory over TCP with `token` (a move). */
  z.object({
    type: z.literal('export-volume'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    token: z.string().min(16),
    ttlMs: z.number().int().min(1_000).max(86_400_000),
  }),
  /**
   * Copies an instance's data directory from a peer cell into this cell's incoming area
   * (resumable, only what changed since the last pass); `final` marks the copy complete for
   * `moveId`, so a spec with that `moveIn` adopts it.
   */
  z.object({
    type: z.literal('import-volume'),
    orderId: z.string().min(1),
    instanceId: z.string(),
    moveId: z.string().regex(SNAPSHOT_ID_PATTERN),
    source: hostPortSchema,
    token: z.string().min(16),
    final: z.boolean(),
  }),
  /** Removes the incoming copy of a move that was abandoned. */
  z.object({ type: z.literal('drop-incoming'), orderId: z.string().min(1), instanceId: z.string() }),
  /** Removes a snapshot from this cell's store. */
  z.object({
    type: z.literal('delete-snapshot'),
    orderId: z.string().min(1),
    snapshotId: z.string().regex(SNAPSHOT_ID_PATTERN),
  }),
]);
export type Order = z.infer<typeof orderSchema>;
export type OrderType = Order['type'];

export interface OrderResult {
  orderId: string;
  type: OrderType | 'invalid';
  cell: string;
  ok: boolean;
  /** Order-specific data, e.g. `{ position, positionValue }`. */
  data?: Record<string, unknown>;
  error?: { code: string; message: string };
  finishedAt: number;
}

/** Registration value, refreshed every heartbeat. */
export interface CellRecord {
  name: string;
  zone: string;
  capacityMb: number;
  /** Sum of the volume sizes of every instance whose volume is on this cell. */
  usedMb: number;
  /** Measured disk usage of every volume on this cell (MiB); absent before the first measurement. */
  diskUsedMb?: number;
  /** Instances whose volume reached its size: their engines refuse writes. */
  volumesFull?: string[];
  /** Address that clients, routers and replicas use to reach this cell's instances. */
  host: string;
  executors: ExecutorKind[];
  engines: EngineKind[];
  /**
   * Sidecars the cell can run as processes (their binaries are installed); absent = none. A
   * docker cell runs them from the engine's image whatever this says, like engines.
   */
  sidecars?: SidecarKind[];
  portRange: { from: number; to: number };
  instances: number;
  startedAt: number;
  heartbeatAt: number;
  heartbeatTtlMs: number;
  /** Where the cell's Prometheus `/metrics` answers, when it serves one (`--metrics-listen`). */
  metrics?: { host: string; port: number };
  /** Where peer cells read snapshots and volumes from (cell-to-cell copies over TCP). */
  transfer?: { host: string; port: number };
  /** Snapshot ids in this cell's snapshot store. */
  snapshots?: string[];
}

export type CellEvent =
  | { type: 'registered'; cell: string; record: CellRecord }
  | { type: 'actual'; cell: string; instanceId: string; actual: ActualInstance | null }
  | { type: 'order-result'; cell: string; result: OrderResult }
  /** Progress of a copy this cell receives (snapshot or volume): bytes so far, total when known. */
  | { type: 'transfer-progress'; cell: string; id: string; bytes: number; totalBytes: number | null; at: number }
  | { type: 'deregistered'; cell: string };
