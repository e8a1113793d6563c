/**
 * Control-only Redis keys. The keys routers read (per-group snapshot, deltas, heartbeats) are
 * defined in router/route-push-protocol.ts; docs/control-api.md lists both.
 */
import { DEFAULT_KEY_PREFIX, routerGroupKeys, type RouterGroupKeys } from '../../protocol/route-push-protocol';

export interface ControlKeys {
  /** Hash: router group guid -> RouterGroup JSON. */
  routerGroups: string;
  /** String: version of the router group registry, guarding its writes. */
  routerGroupsVersion: string;
  /** Hash: sha256(token) -> TokenRecord JSON. */
  tokens: string;
  /** String: version guarding token writes. */
  tokensVersion: string;
  /** Pub/sub channel carrying route events (Upsert/Delete) for every control's event streams. */
  events: string;
  /** Per-group keys: the router-facing ones plus the control-only mapping hash and expiry index. */
  group(name: string): GroupKeys;
}

export interface GroupKeys extends RouterGroupKeys {
  /** Hash: `port|backendId` -> TcpRouteRecord JSON (TTL, modification tag). */
  mappings: string;
  /** Sorted set: `port|backendId` scored by expiry time in epoch ms (only routes with a TTL). */
  expiry: string;
}

export function controlKeys(prefix = DEFAULT_KEY_PREFIX): ControlKeys {
  return {
    routerGroups: `${prefix}router_groups`,
    routerGroupsVersion: `${prefix}router_groups:version`,
    tokens: `${prefix}tokens`,
    tokensVersion: `${prefix}tokens:version`,
    events: `${prefix}events`,
    group(name: string): GroupKeys {
      const keys = routerGroupKeys(name, prefix);
      const base = `${prefix}rg:{${name}}:`;
      return { ...keys, mappings: `${base}mappings`, expiry: `${base}expiry` };
    },
  };
}
