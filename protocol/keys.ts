/**
 * The one layout of every Redis key and channel the platform uses. Every name takes the configured
 * prefix, so one Redis can hold several installations and every process of one installation —
 * control, routers and cells — meets the others under the same names. docs/control-api.md lists
 * them with their writers; each key has exactly one writer role.
 */

/** @default 'sf:' — every key and channel starts with it. */
export const DEFAULT_KEY_PREFIX = 'sf:';

/** Router group names end up in key names, so they are restricted to a safe alphabet. */
export const ROUTER_GROUP_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** The keys routers read (and the heartbeat they write) for one router group. */
export interface RouterGroupKeys {
  /** String: the table version, INCR'd by every change of the group. */
  version: string;
  /** Hash: port -> Route JSON in the router's shape. Together with `version` this is the snapshot. */
  routes: string;
  /** List: the most recent deltas, newest first, capped (for inspection and catch-up tools). */
  deltas: string;
  /** Pub/sub channel carrying each delta as it is committed. */
  channel: string;
  /** Prefix of the per-router heartbeat keys (`<prefix><routerId>`, string with a TTL). */
  routerHeartbeatPrefix: string;
}

/** A router group's keys: the router-facing ones plus control's own mapping hash and expiry index. */
export interface GroupKeys extends RouterGroupKeys {
  /** Hash: `port|backendId` -> TcpRouteRecord JSON (TTL, modification tag). */
  mappings: string;
  /** Sorted set: `port|backendId` scored by expiry time in epoch ms (only routes with a TTL). */
  expiry: string;
}

/** One cell's keys (docs/cells.md). */
export interface CellKeys {
  /** String, JSON `CellRecord`, with a PX TTL refreshed by the heartbeat. Absent = cell dead. */
  registration: string;
  /** Hash instanceId -> JSON `InstanceSpec`. Written by control only. */
  desired: string;
  /** Hash instanceId -> JSON `ActualInstance`. Written by the cell only. */
  actual: string;
  /** List of JSON `Order`: control LPUSHes, the cell BRPOPs (FIFO). */
  orders: string;
  /** Pub/sub channel control publishes `desired` on after changing the desired hash. */
  notify: string;
}

export interface KeyLayout {
  readonly prefix: string;

  // Routing API (control writes, routers read).
  /** Hash: router group guid -> RouterGroup JSON. */
  readonly routerGroups: string;
  /** String: version of the router group registry, guarding its writes. */
  readonly routerGroupsVersion: string;
  /** Per-group keys. */
  group(name: string): GroupKeys;
  /** Pub/sub channel carrying route events (Upsert/Delete) for every control's event streams. */
  readonly routeEvents: string;

  // API credentials (control only).
  /** Hash: sha256(token) -> TokenRecord JSON. */
  readonly tokens: string;
  /** String: version guarding token writes. */
  readonly tokensVersion: string;
  /** List: audit entries of API writes, newest first, capped (control/api/audit-log.ts). */
  readonly audit: string;

  // Services and leadership (control only).
  /** Hash: service name -> ServiceRecord JSON. */
  readonly services: string;
  /** String: version guarding every write of `services` (optimistic concurrency). */
  readonly servicesVersion: string;
  /** Pub/sub: a service changed and the leader should look at it now. */
  readonly servicesChanged: string;
  /** Pub/sub channel of ServiceEvent JSON. */
  readonly serviceEvents: string;
  /** List: the last service events, newest first. */
  readonly serviceEventLog: string;
  /** String: `${holderId}|${token}` with a PX TTL, the leader lock. */
  readonly leaderLock: string;
  /** String: the fencing token counter; INCRed by every acquisition of the lock. */
  readonly leaderToken: string;
  /** String: JSON `{url, holder, token}` with a PX TTL, where the leader's API answers (forwarding). */
  readonly leaderApi: string;
  /** List: a service's fencing history, newest first. */
  fencingHistory(service: string): string;
  /**
   * Hash: `cell/instanceId` -> VolumeTombstone JSON, the only volumes control may delete (a
   * deleted service's, or a replaced replica's after its retention). Any other volume is kept.
   */
  readonly volumeTombstones: string;
  /** Hash: snapshot id -> SnapshotRecord JSON (control/services/snapshot-records.ts). */
  readonly snapshots: string;
  /** Hash: move id -> MoveRecord JSON (control/services/volume-mover.ts). */
  readonly moves: string;

  // Cells (each key has one writer: see CellKeys).
  /** Set of every cell name that ever registered; liveness is the registration key's existence. */
  readonly cells: string;
  /** One channel for all cells' reports, so control needs one subscription. */
  readonly cellEvents: string;
  cell(name: string): CellKeys;
  /** String, JSON `OrderResult`, with a TTL; written by the cell that ran the order. */
  orderResult(orderId: string): string;
  /** String (the cell's name) with a short TTL the cell renews while it executes the order. */
  orderRunning(orderId: string): string;
  /** Hash: a primary's lease claim, kept in force by its cell's registration (protocol/lease.ts). */
  lease(instanceId: string): string;
  /** String: the lowest epoch a lease claim may carry; raised by control when it fences. */
  leaseFloor(instanceId: string): string;
}

/** Every key and channel under `prefix`. */
export function keyLayout(prefix: string = DEFAULT_KEY_PREFIX): KeyLayout {
  const cellBase = `${prefix}cell:`;
  return {
    prefix,
    routerGroups: `${prefix}router_groups`,
    routerGroupsVersion: `${prefix}router_groups:version`,
    group: (name) => groupKeys(name, prefix),
    routeEvents: `${prefix}events`,
    tokens: `${prefix}tokens`,
    tokensVersion: `${prefix}tokens:version`,
    audit: `${prefix}audit`,
    services: `${prefix}services`,
    servicesVersion: `${prefix}services:version`,
    servicesChanged: `${prefix}services:changed`,
    serviceEvents: `${prefix}service-events`,
    serviceEventLog: `${prefix}service-events:log`,
    leaderLock: `${prefix}leader`,
    leaderToken: `${prefix}leader:token`,
    leaderApi: `${prefix}leader:api`,
    fencingHistory: (service) => `${prefix}fencing:${service}`,
    volumeTombstones: `${prefix}volumes:tombstones`,
    snapshots: `${prefix}snapshots`,
    moves: `${prefix}moves`,
    cells: `${prefix}cells`,
    cellEvents: `${prefix}cell-events`,
    cell: (name) => ({
      registration: `${cellBase}${name}`,
      desired: `${cellBase}${name}:desired`,
      actual: `${cellBase}${name}:actual`,
      orders: `${cellBase}${name}:orders`,
      notify: `${cellBase}${name}:notify`,
    }),
    orderResult: (orderId) => `${prefix}order:${orderId}`,
    orderRunning: (orderId) => `${prefix}order:${orderId}:running`,
    lease: (instanceId) => `${prefix}lease:${instanceId}`,
    leaseFloor: (instanceId) => `${prefix}lease:${instanceId}:floor`,
  };
}

/** A router group's keys; routers need only these, so they can be had without the whole layout. */
export function routerGroupKeys(group: string, prefix: string = DEFAULT_KEY_PREFIX): RouterGroupKeys {
  const { version, routes, deltas, channel, routerHeartbeatPrefix } = groupKeys(group, prefix);
  return { version, routes, deltas, channel, routerHeartbeatPrefix };
}

function groupKeys(group: string, prefix: string): GroupKeys {
  // The hash tag keeps a group's keys in one slot should the store ever be a Redis Cluster.
  const base = `${prefix}rg:{${group}}:`;
  return {
    version: `${base}version`,
    routes: `${base}routes`,
    deltas: `${base}deltas`,
    channel: `${base}changes`,
    routerHeartbeatPrefix: `${base}routers:`,
    mappings: `${base}mappings`,
    expiry: `${base}expiry`,
  };
}
