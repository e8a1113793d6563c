/**
 * The Redis push protocol between control (the only writer) and routers (readers): key names,
 * the delta message and the heartbeat record. It lives next to the route model because both
 * sides depend on it and the router must not import control (DESIGN.md, "Dependencies point
 * one way"). docs/control-api.md describes the layout for operators.
 */
import type { Route } from './route-model';

/** @default 'sf:' — every key and channel starts with it, so one Redis can hold several installations. */
export const DEFAULT_KEY_PREFIX = 'sf:';

/** Router group names end up in key names, so they are restricted to a safe alphabet. */
export const ROUTER_GROUP_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

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

export function routerGroupKeys(group: string, prefix = DEFAULT_KEY_PREFIX): RouterGroupKeys {
  // The hash tag keeps a group's keys in one slot should the store ever be a Redis Cluster.
  const base = `${prefix}rg:{${group}}:`;
  return {
    version: `${base}version`,
    routes: `${base}routes`,
    deltas: `${base}deltas`,
    channel: `${base}changes`,
    routerHeartbeatPrefix: `${base}routers:`,
  };
}

/** One committed change of a router group's table; `version` is the version it produces. */
export interface RouteDelta {
  version: number;
  /** Whole routes that were added or changed, in the router's shape. */
  upserts: Route[];
  /** Ports whose routes were removed. */
  deletes: number[];
}

/** What a router writes under its heartbeat key: who it is and which version it serves. */
export interface RouterHeartbeat {
  routerId: string;
  routerGroup: string;
  version: number;
  /** Whether both Redis connections were up when the heartbeat was written. */
  connected: boolean;
  /** Epoch milliseconds of the heartbeat. */
  at: number;
}
