/**
 * Typed errors of the cell with stable codes. They follow the project's `SfError` convention so the
 * CLI maps them to exit codes and control can relay `code` in order results unchanged.
 */
import { SfError } from '../common/errors';

export const CellErrorCode = {
  InvalidSpec: 'SF_ERR_INVALID_INSTANCE_SPEC',
  InvalidOption: 'SF_ERR_INVALID_OPTION',
  StaleEpoch: 'SF_ERR_STALE_EPOCH',
  ExecutorUnavailable: 'SF_ERR_EXECUTOR_UNAVAILABLE',
  EngineUnavailable: 'SF_ERR_ENGINE_UNAVAILABLE',
  EngineUnsupported: 'SF_ERR_ENGINE_UNSUPPORTED',
  EngineCommandFailed: 'SF_ERR_ENGINE_COMMAND_FAILED',
  StartTimeout: 'SF_ERR_START_TIMEOUT',
  InstanceExited: 'SF_ERR_INSTANCE_EXITED',
  InstanceNotFound: 'SF_ERR_INSTANCE_NOT_FOUND',
  InstanceRunning: 'SF_ERR_INSTANCE_RUNNING',
  NoFreePort: 'SF_ERR_NO_FREE_PORT',
  LeaseRefused: 'SF_ERR_LEASE_REFUSED',
  FenceFailed: 'SF_ERR_FENCE_FAILED',
  UnknownOrder: 'SF_ERR_UNKNOWN_ORDER',
  OrderTimeout: 'SF_ERR_ORDER_TIMEOUT',
} as const;

export type CellErrorCodeValue = (typeof CellErrorCode)[keyof typeof CellErrorCode];

export class CellError extends SfError {
  constructor(code: CellErrorCodeValue, message: string, field?: string) {
    super(code, message, field);
    this.name = 'CellError';
  }
}

/** The stable code of any thrown value, for reporting errors through Redis. */
export function errorCodeOf(err: unknown): string {
  if (err instanceof SfError) return err.code;
  return 'SF_ERR_INTERNAL';
}

export function errorMessageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
