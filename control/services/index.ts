/** The service plane's public API. */
export { ServiceStore, type ServiceSnapshot, type ServiceChange } from './service-store';
export { CellDirectory, type CellSnapshot } from './cell-directory';
export {
  serviceCreateSchema,
  DEFAULT_SERVICE_REQUEST,
  MAX_REPLICAS,
  SERVICE_TLS_POLICIES,
  type ServiceTlsPolicy,
  type ServiceCreateRequest,
  type ServiceCreateInput,
} from './service-schema';
export { serviceView, instanceView } from './service-view';
export { admitService, requestServiceDeletion } from './service-admission';
export type * from './service-types';
export {
  DegradedFailoverCoordinator,
  type FailoverCoordinator,
  type FailoverOutcome,
  type PrimaryLoss,
  type PrimaryLossReason,
} from './failover-coordinator';
export { RouteEmitter } from './route-emitter';
export { ServiceCertificates, serviceRouteTls, type ServiceTlsFiles } from './service-certificates';
export { instanceSpec, DEFAULT_PRIMARY_LEASE_TTL_MS } from './instance-spec';
export {
  hasCredentials,
  generatePassword,
  newServiceCredentials,
  instanceCredentials,
  keyUsername,
  serviceKeyCredentials,
  serviceKeyCreateSchema,
  serviceKeyNameSchema,
  MAX_SERVICE_KEYS,
  PLATFORM_USERS,
  type ServiceKeyCredentials,
} from './service-credentials';
