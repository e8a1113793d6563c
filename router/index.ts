/** The router's public API: what the CLI, control and tests may import. */
export { Router, type ApplyResult, type RouterStatus, type SelfLoop } from './router';
export type { ListenAddress } from './self-address';
export { DEFAULT_ROUTER_OPTIONS, type RouterOptions, type DisconnectPolicy } from './router-options';
export type { RouteSource, RouteSourceListener } from './route-source';
export { FileRouteSource, type FileRouteSourceOptions } from './route-source-file';
export { RedisRouteSource, type RedisRouteSourceOptions } from './route-source-redis';
export { routeSourceFromControl, fetchControlInfo, type ControlInfo } from './route-source-control';
export type { Relay, RelayedPair, RelayOptions, RelayCallbacks, RelayCloseReason } from './relay';
export { createJsRelay } from './relay-js';
export { selectRelay, type RelayChoice } from './relay-select';
export { startAdminServer, type AdminServer } from './admin-server';
export { createRouterMetrics } from './metrics';
export { connectionFate, type ConnectionFate } from './route-binding';
export { parseClientHelloSni, hostMatches, type SniResult } from './sni';
export { proxyHeader, proxyHeaderV1, proxyHeaderV2, type ProxyAddresses } from './proxy-protocol';
// The route model and the error registry, so an embedder of the router needs one import.
export * from '../protocol';
export * from '../common';
