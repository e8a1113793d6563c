/**
 * The one registry of error codes. Every `SF_ERR_*` code is defined here, once, with the HTTP
 * status it maps to; the router, control, cells and the CLI all throw `SfError` with one of these
 * codes. Tests and clients rely on `code`, never on message text.
 */

/** Every error code of the platform, grouped by the part that usually raises it. */
export const ErrorCode = {
  // Input and requests.
  InvalidRequest: 'SF_ERR_INVALID_REQUEST',
  InvalidJson: 'SF_ERR_INVALID_JSON',
  InvalidOption: 'SF_ERR_INVALID_OPTION',
  InvalidRouteTable: 'SF_ERR_INVALID_ROUTE_TABLE',
  InvalidInstanceSpec: 'SF_ERR_INVALID_INSTANCE_SPEC',
  BodyTooLarge: 'SF_ERR_BODY_TOO_LARGE',
  HeadersTooLarge: 'SF_ERR_HEADERS_TOO_LARGE',
  UrlTooLong: 'SF_ERR_URL_TOO_LONG',
  Unauthorized: 'SF_ERR_UNAUTHORIZED',
  Forbidden: 'SF_ERR_FORBIDDEN',
  NotFound: 'SF_ERR_NOT_FOUND',
  Timeout: 'SF_ERR_TIMEOUT',
  Internal: 'SF_ERR_INTERNAL',

  // Router data plane.
  RouteConflict: 'SF_ERR_ROUTE_CONFLICT',
  BackendFenced: 'SF_ERR_BACKEND_FENCED',
  BackendRemoved: 'SF_ERR_BACKEND_REMOVED',
  NoBackend: 'SF_ERR_NO_BACKEND',
  ConnectTimeout: 'SF_ERR_CONNECT_TIMEOUT',
  IdleTimeout: 'SF_ERR_IDLE_TIMEOUT',
  MaxConnections: 'SF_ERR_MAX_CONNECTIONS',
  ListenFailed: 'SF_ERR_LISTEN_FAILED',
  RouteSource: 'SF_ERR_ROUTE_SOURCE',
  /** The store holds an older route table than the router applied (it lost data); refused. */
  RouteVersionBackwards: 'SF_ERR_ROUTE_VERSION_BACKWARDS',
  Metrics: 'SF_ERR_METRICS',
  /** A certificate could not be issued, read or loaded (platform CA, a route's TLS files). */
  Certificate: 'SF_ERR_CERTIFICATE',

  // Control state.
  StaleModificationTag: 'SF_ERR_STALE_MODIFICATION_TAG',
  PortNotReservable: 'SF_ERR_PORT_NOT_RESERVABLE',
  PortConflict: 'SF_ERR_PORT_CONFLICT',
  RouterGroupExists: 'SF_ERR_ROUTER_GROUP_EXISTS',
  RouterGroupInUse: 'SF_ERR_ROUTER_GROUP_IN_USE',
  StoreBusy: 'SF_ERR_STORE_BUSY',
  StoreUnavailable: 'SF_ERR_STORE_UNAVAILABLE',
  ServiceExists: 'SF_ERR_SERVICE_EXISTS',
  /** A service key of that name exists already (`sf create-service-key`). */
  ServiceKeyExists: 'SF_ERR_SERVICE_KEY_EXISTS',
  PlacementUnsatisfiable: 'SF_ERR_PLACEMENT_UNSATISFIABLE',
  NoRoutePort: 'SF_ERR_NO_ROUTE_PORT',
  StaleLeader: 'SF_ERR_STALE_LEADER',

  // Fencing and failover.
  /** Fencing actions run on the leader only; retry against the control that holds the lock. */
  NotLeader: 'SF_ERR_NOT_LEADER',
  /** The service has no primary to fence or switch over from. */
  NoPrimary: 'SF_ERR_NO_PRIMARY',
  /** No replica is alive and running, so nothing can be promoted. */
  NoPromotionCandidate: 'SF_ERR_NO_PROMOTION_CANDIDATE',
  /** `--to` names an instance that is not an eligible replica of the service. */
  InvalidFailoverTarget: 'SF_ERR_INVALID_FAILOVER_TARGET',
  /** A planned switchover's target did not reach the primary's position in time; nothing switched. */
  CatchUpTimeout: 'SF_ERR_CATCH_UP_TIMEOUT',
  /** Another fencing operation on the same service is running. */
  FailoverInProgress: 'SF_ERR_FAILOVER_IN_PROGRESS',
  /** A fencing action that is not possible in the service's current state (nothing to unfence, already fenced...). */
  ActionRefused: 'SF_ERR_ACTION_REFUSED',
  /** A primary could not commit a write within the bound (no sync standby, connections exhausted). */
  CommitCheckFailed: 'SF_ERR_COMMIT_CHECK_FAILED',
  /** A cell refused or failed an order the sequence cannot continue without (e.g. promote). */
  OrderFailed: 'SF_ERR_ORDER_FAILED',

  // Cells.
  StaleEpoch: 'SF_ERR_STALE_EPOCH',
  ExecutorUnavailable: 'SF_ERR_EXECUTOR_UNAVAILABLE',
  EngineUnavailable: 'SF_ERR_ENGINE_UNAVAILABLE',
  EngineUnsupported: 'SF_ERR_ENGINE_UNSUPPORTED',
  EngineCommandFailed: 'SF_ERR_ENGINE_COMMAND_FAILED',
  StartTimeout: 'SF_ERR_START_TIMEOUT',
  InstanceExited: 'SF_ERR_INSTANCE_EXITED',
  InstanceFailed: 'SF_ERR_INSTANCE_FAILED',
  InstanceNotFound: 'SF_ERR_INSTANCE_NOT_FOUND',
  InstanceRunning: 'SF_ERR_INSTANCE_RUNNING',
  NoFreePort: 'SF_ERR_NO_FREE_PORT',
  LeaseRefused: 'SF_ERR_LEASE_REFUSED',
  FenceFailed: 'SF_ERR_FENCE_FAILED',
  UnknownOrder: 'SF_ERR_UNKNOWN_ORDER',
  OrderTimeout: 'SF_ERR_ORDER_TIMEOUT',
  /** A `tcp` command outside the cell's allow-list (`sf cell --tcp-allow`). */
  TcpCommandNotAllowed: 'SF_ERR_TCP_COMMAND_NOT_ALLOWED',
  /** A cell-to-cell copy failed (peer unreachable, refused token, checksum mismatch). */
  TransferFailed: 'SF_ERR_TRANSFER_FAILED',
  /** A snapshot could not be taken or restored (engine refused, no cell holds it). */
  SnapshotFailed: 'SF_ERR_SNAPSHOT_FAILED',

  // The CLI's view of control.
  ControlUnreachable: 'SF_ERR_CONTROL_UNREACHABLE',
  BadResponse: 'SF_ERR_BAD_RESPONSE',
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * The HTTP status of each code. Codes a server never answers with (the CLI's own) map to 500 like
 * anything unexpected, so the table stays total and a new code cannot be forgotten.
 */
const HTTP_STATUS: Record<ErrorCodeValue, number> = {
  SF_ERR_INVALID_REQUEST: 400,
  SF_ERR_INVALID_JSON: 400,
  SF_ERR_INVALID_OPTION: 400,
  SF_ERR_INVALID_ROUTE_TABLE: 400,
  SF_ERR_INVALID_INSTANCE_SPEC: 400,
  SF_ERR_BODY_TOO_LARGE: 413,
  SF_ERR_HEADERS_TOO_LARGE: 431,
  SF_ERR_URL_TOO_LONG: 414,
  SF_ERR_UNAUTHORIZED: 401,
  SF_ERR_FORBIDDEN: 403,
  SF_ERR_NOT_FOUND: 404,
  SF_ERR_TIMEOUT: 504,
  SF_ERR_INTERNAL: 500,

  SF_ERR_ROUTE_CONFLICT: 409,
  SF_ERR_BACKEND_FENCED: 409,
  SF_ERR_BACKEND_REMOVED: 409,
  SF_ERR_NO_BACKEND: 503,
  SF_ERR_CONNECT_TIMEOUT: 504,
  SF_ERR_IDLE_TIMEOUT: 504,
  SF_ERR_MAX_CONNECTIONS: 503,
  SF_ERR_LISTEN_FAILED: 500,
  SF_ERR_ROUTE_SOURCE: 503,
  SF_ERR_ROUTE_VERSION_BACKWARDS: 503,
  SF_ERR_METRICS: 500,
  SF_ERR_CERTIFICATE: 500,

  SF_ERR_STALE_MODIFICATION_TAG: 409,
  SF_ERR_PORT_NOT_RESERVABLE: 422,
  SF_ERR_PORT_CONFLICT: 409,
  SF_ERR_ROUTER_GROUP_EXISTS: 409,
  SF_ERR_ROUTER_GROUP_IN_USE: 409,
  SF_ERR_STORE_BUSY: 503,
  SF_ERR_STORE_UNAVAILABLE: 503,
  SF_ERR_SERVICE_EXISTS: 409,
  SF_ERR_SERVICE_KEY_EXISTS: 409,
  SF_ERR_PLACEMENT_UNSATISFIABLE: 422,
  SF_ERR_NO_ROUTE_PORT: 422,
  SF_ERR_STALE_LEADER: 409,

  SF_ERR_NOT_LEADER: 503,
  SF_ERR_NO_PRIMARY: 409,
  SF_ERR_NO_PROMOTION_CANDIDATE: 409,
  SF_ERR_ACTION_REFUSED: 409,
  SF_ERR_COMMIT_CHECK_FAILED: 503,
  SF_ERR_INVALID_FAILOVER_TARGET: 400,
  SF_ERR_CATCH_UP_TIMEOUT: 409,
  SF_ERR_FAILOVER_IN_PROGRESS: 409,
  SF_ERR_ORDER_FAILED: 502,

  SF_ERR_STALE_EPOCH: 409,
  SF_ERR_EXECUTOR_UNAVAILABLE: 503,
  SF_ERR_ENGINE_UNAVAILABLE: 503,
  SF_ERR_ENGINE_UNSUPPORTED: 422,
  SF_ERR_ENGINE_COMMAND_FAILED: 502,
  SF_ERR_START_TIMEOUT: 504,
  SF_ERR_INSTANCE_EXITED: 502,
  SF_ERR_INSTANCE_FAILED: 502,
  SF_ERR_INSTANCE_NOT_FOUND: 404,
  SF_ERR_INSTANCE_RUNNING: 409,
  SF_ERR_NO_FREE_PORT: 503,
  SF_ERR_LEASE_REFUSED: 409,
  SF_ERR_FENCE_FAILED: 502,
  SF_ERR_UNKNOWN_ORDER: 400,
  SF_ERR_ORDER_TIMEOUT: 504,
  SF_ERR_TRANSFER_FAILED: 502,
  SF_ERR_SNAPSHOT_FAILED: 409,
  SF_ERR_TCP_COMMAND_NOT_ALLOWED: 403,

  SF_ERR_CONTROL_UNREACHABLE: 500,
  SF_ERR_BAD_RESPONSE: 500,
};

export class SfError extends Error {
  readonly code: ErrorCodeValue;
  /** Path of the offending input field in one format everywhere: `routes[0].backends[1].port`. */
  readonly field: string | undefined;

  constructor(code: ErrorCodeValue, message: string, field?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SfError';
    this.code = code;
    this.field = field;
  }
}

export function isSfError(err: unknown): err is SfError {
  return err instanceof SfError;
}

/** True for a string that is one of the registry's codes (e.g. a code relayed through Redis). */
export function isErrorCode(code: unknown): code is ErrorCodeValue {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(HTTP_STATUS, code);
}

/** The HTTP status for an error; anything unexpected is a 500. */
export function httpStatusFor(err: unknown): number {
  return isSfError(err) ? HTTP_STATUS[err.code] : 500;
}

/** The body every error response carries: `{ error: { code, message, field } }`. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

export function errorBody(err: unknown): ErrorBody {
  if (isSfError(err)) return { error: { code: err.code, message: err.message, field: err.field } };
  // Internal details stay in the log, not in the response.
  return { error: { code: ErrorCode.Internal, message: 'internal error' } };
}

/** An invalid-request error whose message starts with the field it names. */
export function invalid(field: string, message: string): SfError {
  return new SfError(ErrorCode.InvalidRequest, `${field} ${message}`, field);
}

/** The stable code of any thrown value, for reporting errors through Redis. */
export function errorCodeOf(err: unknown): ErrorCodeValue {
  return isSfError(err) ? err.code : ErrorCode.Internal;
}

export function errorMessageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The first issue of a failed schema validation as an SfError naming the field. */
export function schemaError(error: SchemaIssues, code: ErrorCodeValue, prefix = ''): SfError {
  const issue = error.issues[0];
  const field = fieldPath(issue?.path ?? [], prefix) || prefix || 'body';
  let message = issue?.message ?? 'is invalid';
  if (issue?.code === 'unrecognized_keys' && issue.keys) {
    message = `has unknown field(s) ${issue.keys.map((k) => `'${k}'`).join(', ')}`;
  }
  return new SfError(code, `${field} ${message}`, field);
}

/** The part of a schema library's error this module reads (zod's `ZodError` fits it). */
export interface SchemaIssues {
  issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string; code?: string; keys?: string[] }>;
}

/**
 * A field path in the one format every error uses: `routes[0].backends[1].port`. Schema libraries
 * give paths as arrays of keys and indexes; this renders them.
 */
export function fieldPath(path: ReadonlyArray<PropertyKey>, prefix = ''): string {
  let out = prefix;
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out ? `.${String(key)}` : String(key);
  }
  return out;
}
