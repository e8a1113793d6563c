/**
 * Stable error codes of fencing and failover, with the HTTP status each maps to. The API and the
 * CLI report `code`; tests assert on it.
 */
import { SfError } from '../errors';

export const FailoverErrorCode = {
  /** Fencing actions run on the leader only; retry against the control that holds the lock. */
  NotLeader: 'SF_ERR_NOT_LEADER',
  /** The service has no primary to fence or switch over from. */
  NoPrimary: 'SF_ERR_NO_PRIMARY',
  /** No replica is alive and running, so nothing can be promoted. */
  NoCandidate: 'SF_ERR_NO_PROMOTION_CANDIDATE',
  /** `--to` names an instance that is not an eligible replica of the service. */
  InvalidTarget: 'SF_ERR_INVALID_FAILOVER_TARGET',
  /** A planned switchover's target did not reach the primary's position in time; nothing switched. */
  CatchUpTimeout: 'SF_ERR_CATCH_UP_TIMEOUT',
  /** Another fencing operation on the same service is running. */
  InProgress: 'SF_ERR_FAILOVER_IN_PROGRESS',
  /** A cell refused or failed an order the sequence cannot continue without (e.g. promote). */
  OrderFailed: 'SF_ERR_ORDER_FAILED',
} as const;

export type FailoverErrorCodeValue = (typeof FailoverErrorCode)[keyof typeof FailoverErrorCode];

const STATUS: Record<FailoverErrorCodeValue, number> = {
  SF_ERR_NOT_LEADER: 503,
  SF_ERR_NO_PRIMARY: 409,
  SF_ERR_NO_PROMOTION_CANDIDATE: 409,
  SF_ERR_INVALID_FAILOVER_TARGET: 400,
  SF_ERR_CATCH_UP_TIMEOUT: 409,
  SF_ERR_FAILOVER_IN_PROGRESS: 409,
  SF_ERR_ORDER_FAILED: 502,
};

export class FailoverError extends SfError {
  constructor(code: FailoverErrorCodeValue, message: string, field?: string) {
    super(code, message, field);
    this.name = 'FailoverError';
  }
}

/** The HTTP status of a failover error code, or undefined for codes owned elsewhere. */
export function failoverHttpStatus(code: string): number | undefined {
  return (STATUS as Record<string, number>)[code];
}
