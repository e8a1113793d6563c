/**
 * Error codes of the control plane, extending the router's SfError convention: a stable `code`,
 * a message naming the field, and the HTTP status each code maps to. Clients and tests rely on
 * `code`, never on message text.
 */
import { ErrorCode as RouterErrorCode, SfError, isSfError } from '../common/errors';

export const ControlErrorCode = {
  InvalidRequest: 'SF_ERR_INVALID_REQUEST',
  InvalidJson: 'SF_ERR_INVALID_JSON',
  BodyTooLarge: 'SF_ERR_BODY_TOO_LARGE',
  Unauthorized: 'SF_ERR_UNAUTHORIZED',
  Forbidden: 'SF_ERR_FORBIDDEN',
  NotFound: 'SF_ERR_NOT_FOUND',
  StaleModificationTag: 'SF_ERR_STALE_MODIFICATION_TAG',
  PortNotReservable: 'SF_ERR_PORT_NOT_RESERVABLE',
  PortConflict: 'SF_ERR_PORT_CONFLICT',
  RouterGroupExists: 'SF_ERR_ROUTER_GROUP_EXISTS',
  RouterGroupInUse: 'SF_ERR_ROUTER_GROUP_IN_USE',
  StoreBusy: 'SF_ERR_STORE_BUSY',
  StoreUnavailable: 'SF_ERR_STORE_UNAVAILABLE',
  ServiceExists: 'SF_ERR_SERVICE_EXISTS',
  PlacementUnsatisfiable: 'SF_ERR_PLACEMENT_UNSATISFIABLE',
  NoRoutePort: 'SF_ERR_NO_ROUTE_PORT',
  StaleLeader: 'SF_ERR_STALE_LEADER',
  Internal: 'SF_ERR_INTERNAL',
} as const;

export type ControlErrorCodeValue = (typeof ControlErrorCode)[keyof typeof ControlErrorCode];

const STATUS_BY_CODE: Record<string, number> = {
  [ControlErrorCode.InvalidRequest]: 400,
  [ControlErrorCode.InvalidJson]: 400,
  [RouterErrorCode.InvalidRouteTable]: 400,
  [ControlErrorCode.BodyTooLarge]: 413,
  [ControlErrorCode.Unauthorized]: 401,
  [ControlErrorCode.Forbidden]: 403,
  [ControlErrorCode.NotFound]: 404,
  [ControlErrorCode.StaleModificationTag]: 409,
  [ControlErrorCode.PortConflict]: 409,
  [RouterErrorCode.RouteConflict]: 409,
  [ControlErrorCode.RouterGroupExists]: 409,
  [ControlErrorCode.RouterGroupInUse]: 409,
  [ControlErrorCode.PortNotReservable]: 422,
  [ControlErrorCode.ServiceExists]: 409,
  [ControlErrorCode.PlacementUnsatisfiable]: 422,
  [ControlErrorCode.NoRoutePort]: 422,
  [ControlErrorCode.StaleLeader]: 409,
  [ControlErrorCode.StoreBusy]: 503,
  [ControlErrorCode.StoreUnavailable]: 503,
};

/** The HTTP status for an error; anything unexpected is a 500. */
export function httpStatusFor(err: unknown): number {
  return (isSfError(err) && STATUS_BY_CODE[err.code]) || 500;
}

/** The body every error response carries: `{ error: { code, message, field } }`. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

export function errorBody(err: unknown): ErrorBody {
  if (isSfError(err)) return { error: { code: err.code, message: err.message, field: err.field } };
  // Internal details stay in the log, not in the response.
  return { error: { code: ControlErrorCode.Internal, message: 'internal error' } };
}

export function invalid(field: string, message: string): SfError {
  return new SfError(ControlErrorCode.InvalidRequest, `${field} ${message}`, field);
}

export { SfError, isSfError };
