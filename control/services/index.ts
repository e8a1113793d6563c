/** The service plane's public API. */
export {
  startServicePlane,
  DEFAULT_SERVICE_PLANE_OPTIONS,
  type ServicePlane,
  type ServicePlaneOptions,
  type ServicePlaneDeps,
} from './service-plane';
export { ServiceStore, type ServiceSnapshot, type ServiceChange } from './service-store';
export { CellDirectory, type CellSnapshot } from './cell-directory';
export {
  serviceCreateSchema,
  DEFAULT_SERVICE_REQUEST,
  MAX_REPLICAS,
  type ServiceCreateRequest,
  type ServiceCreateInput,
} from './service-schema';
export { serviceView, instanceView } from './service-view';
export { admitService, requestServiceDeletion } from './service-admission';
export type * from './service-types';
export type { FailoverCoordinator, FailoverOutcome, PrimaryLoss } from '../convergence/failover-coordinator';
