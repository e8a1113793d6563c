/**
 * TCP routes in Cloud Foundry's shape: one record maps a router port to one backend. All
 * records on a port form one route of the router's model (router/route-model.ts); the route-level
 * fields (mode, sni, limits) are shared by them and the backend fields are each record's own.
 */
import type { BackendRole, BackendState, RouteSettings } from '../../protocol';

export interface ModificationTag {
  guid: string;
  index: number;
}

/** Route-level fields a record may set; the latest writer's values apply to the whole route. */
export type RouteLevelFields = Partial<RouteSettings>;

export const ROUTE_LEVEL_FIELDS = [
  'mode',
  'sni',
  'proxyProtocol',
  'tls',
  'maxConnections',
  'connectTimeoutMs',
  'idleTimeoutMs',
  'drainTimeoutMs',
] as const satisfies ReadonlyArray<keyof RouteLevelFields>;

/**
 * Identifies one record: CF's key (group, port, backend address, backend TLS port, backend SNI
 * host name, backend mTLS) or an explicit backend id.
 */
export interface TcpRouteKeyInput {
  router_group_guid: string;
  port: number;
  backend_ip: string;
  backend_port: number;
  backend_tls_port?: number;
  backend_sni_hostname?: string;
  enable_backend_mtls?: boolean;
  /** @default derived from CF's key fields by `backendIdOf` */
  backend_id?: string;
  /** When given, a stale tag refuses the write (same guid, lower index). */
  modification_tag?: ModificationTag;
}

/**
 * Fields of Cloud Foundry's `TcpRouteMapping` that Service Foundry stores and returns but does not
 * act on in the data path (backend TLS, SNI per record, frontend TLS termination, isolation
 * segments are routed by CF's own components).
 */
export interface CfRecordFields {
  /** @default 0 (CF: no backend TLS) */
  backend_tls_port?: number;
  /** @default '' */
  instance_id?: string;
  /** @default '' */
  isolation_segment?: string;
  backend_sni_hostname?: string;
  sni_rewrite_hostname?: string;
  terminate_frontend_tls?: boolean;
  /** Comma-separated ALPN protocols, as CF keeps them. */
  alpns?: string;
  enable_backend_mtls?: boolean;
}

export const CF_RECORD_FIELDS = [
  'backend_tls_port',
  'instance_id',
  'isolation_segment',
  'backend_sni_hostname',
  'sni_rewrite_hostname',
  'terminate_frontend_tls',
  'alpns',
  'enable_backend_mtls',
] as const satisfies ReadonlyArray<keyof CfRecordFields>;

/**
 * The CF fields a re-registration replaces; the others keep the values of the first registration,
 * as in CF's `updateTcpRouteMapping`.
 */
export const CF_UPDATABLE_FIELDS = ['isolation_segment', 'sni_rewrite_hostname'] as const satisfies ReadonlyArray<
  keyof CfRecordFields
>;

export interface TcpRouteInput extends TcpRouteKeyInput, RouteLevelFields, CfRecordFields {
  /** Seconds until the record expires unless re-registered; absent: never (the API sets a default). */
  ttl?: number;
  role?: BackendRole;
  weight?: number;
  epoch?: number;
  state?: BackendState;
  /** The router reaches this backend over TLS (the backend's `tls`); absent: unchanged. */
  backend_tls?: boolean;
  /** Removes the route's TLS section (a service whose TLS policy became `off`); not in the routing API. */
  clear_tls?: boolean;
}

/** What control stores per record next to the route itself. */
export interface TcpRouteRecord extends CfRecordFields {
  port: number;
  backend_id: string;
  backend_ip: string;
  backend_port: number;
  ttl: number | null;
  modification_tag: ModificationTag;
  /** Epoch ms, or null for records without a TTL. */
  expires_at: number | null;
}

/** A record as the API returns it: CF's fields plus our backend and route-level fields. */
export interface TcpRouteMapping extends RouteLevelFields {
  router_group_guid: string;
  port: number;
  backend_ip: string;
  backend_port: number;
  backend_tls_port: number;
  instance_id: string;
  isolation_segment: string;
  backend_sni_hostname?: string;
  sni_rewrite_hostname?: string;
  terminate_frontend_tls?: boolean;
  alpns?: string;
  enable_backend_mtls?: boolean;
  backend_id: string;
  ttl: number | null;
  modification_tag: ModificationTag;
  expires_at: string | null;
  role: BackendRole;
  weight: number;
  epoch: number;
  state: BackendState;
  /** Present when the router reaches this backend over TLS. */
  backend_tls?: boolean;
}

export type RouteEventType = 'Upsert' | 'Delete';

export interface RouteEvent {
  type: RouteEventType;
  route: TcpRouteMapping;
}

export function mappingKey(port: number, backendId: string): string {
  return `${port}|${backendId}`;
}

/**
 * The backend id of a record: the explicit one, or one built from the fields of CF's unique key
 * (`idx_tcp_route`), so records CF keeps apart stay apart here. The plain `ip:port` form is kept
 * when only the address is set.
 */
export function backendIdOf(
  input: Pick<
    TcpRouteKeyInput,
    'backend_id' | 'backend_ip' | 'backend_port' | 'backend_tls_port' | 'backend_sni_hostname' | 'enable_backend_mtls'
  >,
): string {
  if (input.backend_id !== undefined) return input.backend_id;
  let id = `${input.backend_ip}:${input.backend_port}`;
  if (input.backend_tls_port) id += `+tls:${input.backend_tls_port}`;
  if (input.backend_sni_hostname) id += `+sni:${input.backend_sni_hostname}`;
  if (input.enable_backend_mtls) id += '+mtls';
  return id;
}
