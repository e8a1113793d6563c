/** The control plane's public API: what `sf`, `sf up`, tests and benchmarks build on. */
export { startControlServer, type ControlServer } from './control-server';
export { DEFAULT_CONTROL_SERVER_OPTIONS, DEFAULT_RESERVABLE_PORTS, type ControlServerOptions } from './control-options';
export { adminTokenFile, discoverAdminToken, ensureAdminToken, sfHome } from './admin-token';
export {
  HttpServer,
  type HttpServerOptions,
  type RequestContext,
  type JsonReply,
  type EventStreamSink,
} from './api/http-server';
export { hasScope, type Authenticator, type Principal, type Scope } from './api/auth';
export { casCommit, withCasRetry, encodeCasOps, type CasOp, type CasGuard, type CasPlan } from './state/cas-commit';
export { RouterGroupStore, type RouterGroup, type RouterGroupInput } from './state/router-group-store';
export { TcpRouteStore, type TcpRouteStoreOptions } from './state/tcp-route-store';
export type {
  TcpRouteInput,
  TcpRouteKeyInput,
  TcpRouteMapping,
  RouteEvent,
  ModificationTag,
} from './state/tcp-route-types';
export { TokenStore, type TokenRecord } from './state/token-store';
export { EventHub } from './events/event-hub';
export {
  startServicePlane,
  DEFAULT_SERVICE_PLANE_OPTIONS,
  type ServicePlane,
  type ServicePlaneOptions,
  type ServicePlaneDeps,
} from './service-plane';
export type { ServiceView, ServiceCreateInput } from './services';
export type { FencingStepView, ServiceEventView } from './api/history-views';
