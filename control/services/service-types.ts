/**
 * The service model control keeps in Redis (`sf:services`): what the user asked for, where each
 * instance was placed, and the service's router port. Actual state (running, host, port) is never
 * copied here; it is read from the cells' `actual` hashes, so this record only changes when a
 * decision changes (DESIGN.md "Core model").
 */
import type {
  ActualState,
  DiskSync,
  Durability,
  EngineKind,
  ExecutorKind,
  InstanceRole,
  SidecarKind,
} from '../../protocol';
import type { ServiceTlsPolicy } from './service-schema';

export type FencingPolicy = 'auto' | 'manual';

/**
 * - `pending`: accepted, waiting for the leader to place it;
 * - `starting`: placed, not every instance runs yet;
 * - `running`: every instance runs and the route points at the primary;
 * - `degraded`: the primary or a replica is lost and could not (yet) be replaced;
 * - `unplaceable`: the leader could not find cells for it (see `message`);
 * - `deleting`: the leader is tearing it down.
 */
export type ServiceStatus = 'pending' | 'starting' | 'running' | 'degraded' | 'unplaceable' | 'deleting';

export interface InstanceRecord {
  /** Unique across the platform: `${service}-${index}`; also the volume directory name. */
  id: string;
  cell: string;
  zone: string;
  role: InstanceRole;
  /** Fencing epoch of the primary role (only grows; a failover bumps it). */
  epoch: number;
  /** Raised to ask the cell to restart a failed instance (cells never restart on their own). */
  generation: number;
  /** True once the desired spec has been written to the cell. */
  specWritten: boolean;
  placedAt: number;
  /** Replicas: the primary address last written into the spec (`replicaOf`). */
  upstream?: { host: string; port: number };
  /** When control last raised the generation to restart it; restarts are spaced out. */
  restartedAt?: number;
  /**
   * Set by fencing (control/failover): the instance must never serve as primary again with an
   * epoch below `epoch`; its route backend is rendered `fenced` while this is set.
   */
  fenced?: FenceMark;
  /** Set by a move: the instance's new volume starts from the copy that move made on its cell. */
  moveIn?: { moveId: string };
  /**
   * Set while a move builds this instance as the replacement of instance `moveOf` (a replica that
   * catches up through the engine's own replication): it counts for no replica slot and is never
   * promoted by an automatic failover; the move promotes it or removes it.
   */
  moveOf?: string;
}

export interface ServiceUser {
  username: string;
  password: string;
}

/** A CF-style service key: one client user of the service, revocable on its own. */
export interface ServiceKey extends ServiceUser {
  createdAt: number;
}

export interface ServiceCredentials {
  /** Raised on every change, so cells apply only newer sets (cell-protocol.ts). */
  version: number;
  /** The platform's management user (cells' health checks, promote, rewind). */
  admin: ServiceUser;
  /** What replicas connect to their primary as; never a client's. */
  replication: ServiceUser;
  /**
   * What exporter sidecars read metrics as: a Redis ACL user limited to INFO and the like, a
   * PostgreSQL role in pg_monitor. Absent in services created before it existed.
   */
  monitoring?: ServiceUser;
  /** Service keys by name. */
  keys: Record<string, ServiceKey>;
}

/** How far fencing of an instance got; a new leader resumes from here (docs/fencing.md). */
export interface FenceMark {
  /** The epoch the service moved to when this instance was fenced. */
  epoch: number;
  at: number;
  trigger: string;
  /** Steps 1-3 (route, shoot, network) are done; only promotion is left. */
  complete: boolean;
  /** Peers cut by a network fence, so `unfence` can lift exactly those. */
  networkPeers?: string[];
}

/** What a user asked for, shared by the stored record and the API view. */
export interface ServiceRequestFields {
  name: string;
  engine: EngineKind;
  replicas: number;
  durability: Durability;
  volume: { sizeMb: number };
  fencing: { policy: FencingPolicy };
}

export interface ServiceRecord extends ServiceRequestFields {
  /** How often the engine syncs to disk (docs/volumes.md); absent in records made before it existed. */
  diskSync?: DiskSync;
  /** How many snapshots `sf snapshot` keeps when the request names none; absent = 7. */
  snapshotKeep?: number;
  /** Engine `tcp` only: what the cell runs. */
  command?: { file: string; args: string[] };
  /** The executor its instances run with; absent = each cell's default (process). */
  executor?: ExecutorKind;
  /** TLS with clients on the router port (docs/tls.md); absent in records made before it existed = off. */
  tls?: ServiceTlsPolicy;
  /**
   * PostgreSQL with TLS: the service's certificate files, which its engines present as the router
   * does, so SCRAM channel binding holds through a re-encrypting router (docs/tls.md). Absent in
   * records made before it existed: those engines keep the cell's certificate, and the route
   * reaches them in plaintext.
   */
  tlsCertificate?: { certFile: string; keyFile: string };
  /** Sidecars each instance carries (docs/cells.md, Pods); absent = none. */
  sidecars?: SidecarKind[];
  /** Limits per instance (container limits on the docker executor); absent = none. */
  resources?: { memoryMb?: number; cpus?: number };
  routerGroup: string;
  routerGroupGuid: string;
  /** The router port clients use; reserved at creation from the group's reservable ports. */
  port: number;
  status: ServiceStatus;
  /** Why the service is degraded or unplaceable; null when all is well. */
  message: string | null;
  /** The service's current primary epoch; a new primary always gets a larger one. */
  epoch: number;
  instances: InstanceRecord[];
  /** Next instance index, so a re-created instance never reuses an old id. */
  nextIndex: number;
  /** Fencing token of the leader that last changed this record (0 = never placed). */
  leaderToken: number;
  /**
   * Engines redis and postgres: the service's users, generated at creation. Never
   * part of a view, an event or a log line; only the service-key endpoint hands a key's out.
   */
  credentials?: ServiceCredentials;
  /** Made from a snapshot: its first primary starts from that snapshot's data. */
  restore?: { snapshotId: string; instanceId: string };
  createdAt: number;
  updatedAt: number;
}

/** The state of an instance as the API shows it: the record merged with the cell's report. */
/** `degraded`: running, but a primary whose writes cannot commit (ActualInstance.degraded). */
export type InstanceViewState = ActualState | 'pending' | 'lost' | 'degraded';

export interface InstanceView {
  id: string;
  cell: string;
  zone: string;
  role: InstanceRole;
  state: InstanceViewState;
  epoch: number;
  host: string | null;
  port: number | null;
  healthy: boolean | null;
  /** The instance's sidecars with the port each listens on (null until the cell reports it). */
  sidecars?: InstanceSidecarView[];
  last_error: { code: string; message: string } | null;
}

export interface InstanceSidecarView {
  name: SidecarKind;
  port: number | null;
  /** HTTPS with a client certificate from the platform CA (docs/tls.md); absent: plain HTTP. */
  tls?: boolean;
}

/** The API's shape: snake_case like the rest of `/v3` (the record keeps its stored names). */
export interface ServiceView extends Omit<ServiceRequestFields, 'volume'> {
  volume: { size_mb: number };
  disk_sync: DiskSync;
  /** Snapshots kept by retention when a snapshot request names no `keep`. */
  snapshot_keep: number;
  executor?: ExecutorKind;
  tls: ServiceTlsPolicy;
  sidecars?: SidecarKind[];
  resources?: { memory_mb?: number; cpus?: number };
  router_group: string;
  port: number;
  status: ServiceStatus;
  message: string | null;
  epoch: number;
  instances: InstanceView[];
  created_at: string;
  updated_at: string;
}

/** Published on `sf:service-events` and kept in a capped list, for operators and the failover logic. */
export interface ServiceEvent {
  type:
    | 'service-created'
    | 'service-placed'
    | 'instance-placed'
    | 'instance-removed'
    | 'instance-restarted'
    | 'instance-repointed'
    | 'primary-lost'
    | 'service-degraded'
    | 'service-unplaceable'
    | 'service-running'
    | 'service-deleted'
    | 'volume-deleted'
    | 'service-key-created'
    | 'service-key-deleted'
    | 'service-updated'
    | 'certificate-rotated'
    | 'snapshot-created'
    | 'snapshot-copied'
    | 'snapshot-failed'
    | 'snapshot-deleted'
    | 'service-restored'
    | 'volume-move-started'
    | 'volume-move-progress'
    | 'volume-moved'
    | 'volume-move-failed'
    | 'fencing';
  service: string;
  instanceId?: string;
  cell?: string;
  message: string;
  at: number;
  leaderToken: number;
}
