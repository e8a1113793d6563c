/**
 * Whether the routers serve a service's route yet (`GET /v3/service_instances/:name/route`): the
 * route is in the table with an active backend and, for a service with TLS, its TLS section, and
 * every live router of its group reports a table version at least the one read after the route.
 * A router reports a version only once its apply settled (new ports listening with their TLS
 * context), so `sf create-service --wait` returns when a first client is served as the service's
 * policy says, not a moment before.
 */
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import type { ServiceRecord } from './service-types';

export interface ServiceRouteStatus {
  port: number;
  router_group: string;
  /** The route is in the table with at least one active backend (and its TLS section when due). */
  present: boolean;
  /** TLS with clients as the route has it: 'required', 'optional' or 'off'. */
  tls: string;
  /** Backends the router reaches over TLS. */
  tls_backends: number;
  /** The table version every live router must have applied; null while the route is not present. */
  version: number | null;
  /** Live routers of the group. */
  routers: number;
  /** Routers still below `version`. */
  lagging: string[];
  /**
   * Routers that could not open the port (another process holds it there), with their reason: a
   * client of such a router reaches whatever holds the port, not the service.
   */
  listen_failures: Array<{ router: string; reason: string }>;
  /** present, every live router applied `version`, and none failed to open the port. */
  applied: boolean;
}

export async function serviceRouteStatus(
  record: ServiceRecord,
  deps: { groups: RouterGroupStore; routes: TcpRouteStore },
): Promise<ServiceRouteStatus> {
  const base = { port: record.port, router_group: record.routerGroup };
  const group = await deps.groups.get(record.routerGroupGuid);
  const empty = {
    ...base,
    present: false,
    tls: 'off',
    tls_backends: 0,
    version: null,
    routers: 0,
    lagging: [],
    listen_failures: [],
  };
  if (!group) return { ...empty, applied: false };
  const route = await deps.routes.route(group, record.port);
  const tls = route && typeof route.tls === 'object' && route.tls.mode === 'terminate' ? route.tls.policy : 'off';
  const wantsTls = record.tls !== undefined && record.tls !== 'off';
  const present =
    route !== null && route.backends.some((b) => b.state === 'active') && (!wantsTls || tls === record.tls);
  const beats = await deps.routes.routers(group);
  if (!present) return { ...empty, tls, routers: beats.length, applied: false };
  // Read after the route: a version at least the one that carried it.
  const version = (await deps.routes.table(group, { versionOnly: true })).version;
  const lagging = beats.filter((b) => b.version < version).map((b) => b.routerId);
  const listenFailures = beats.flatMap((b) =>
    (b.failedPorts ?? []).filter((f) => f.port === record.port).map((f) => ({ router: b.routerId, reason: f.reason })),
  );
  return {
    ...base,
    present,
    tls,
    tls_backends: route!.backends.filter((b) => b.tls === true).length,
    version,
    routers: beats.length,
    lagging,
    listen_failures: listenFailures,
    applied: lagging.length === 0 && listenFailures.length === 0,
  };
}
