/**
 * Typed errors of the router with stable codes. Tests and the HTTP API rely on `code`,
 * never on the message text.
 */
export const ErrorCode = {
  InvalidRouteTable: 'SF_ERR_INVALID_ROUTE_TABLE',
  RouteConflict: 'SF_ERR_ROUTE_CONFLICT',
  BackendFenced: 'SF_ERR_BACKEND_FENCED',
  BackendRemoved: 'SF_ERR_BACKEND_REMOVED',
  NoBackend: 'SF_ERR_NO_BACKEND',
  ConnectTimeout: 'SF_ERR_CONNECT_TIMEOUT',
  IdleTimeout: 'SF_ERR_IDLE_TIMEOUT',
  MaxConnections: 'SF_ERR_MAX_CONNECTIONS',
  ListenFailed: 'SF_ERR_LISTEN_FAILED',
  RouteSource: 'SF_ERR_ROUTE_SOURCE',
  InvalidOption: 'SF_ERR_INVALID_OPTION',
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

export class SfError extends Error {
  readonly code: ErrorCodeValue | string;
  /** Dotted path of the offending input field, e.g. `routes[0].backends[1].port`. */
  readonly field: string | undefined;

  constructor(code: ErrorCodeValue | string, message: string, field?: string) {
    super(message);
    this.name = 'SfError';
    this.code = code;
    this.field = field;
  }
}

export function isSfError(err: unknown): err is SfError {
  return err instanceof SfError;
}
