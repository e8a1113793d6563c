/** Options of the fencing failover coordinator, with their defaults in one constant. */

export interface FailoverOptions {
  /** Bounded wait for every live router to report the fenced table version. @default 2000 */
  routerAckTimeoutMs?: number;
  /** Timeout of each order to a cell (fence, position, promote, repoint). @default 2000 */
  orderTimeoutMs?: number;
  /**
   * Past its timeout, an order the cell marks as running (it is executing it: a slow engine on a
   * loaded machine) is waited for up to this long from when it was sent. @default 120000
   */
  orderRunningMaxMs?: number;
  /** How often an order result is polled for. @default 10 */
  orderPollMs?: number;
  /** A running primary without its lease for this long counts as lost. @default 3000 */
  leaseGraceMs?: number;
  /** Planned switchover: how long the target may take to reach the primary's position. @default 10000 */
  catchUpTimeoutMs?: number;
  /** Lease TTL written into a promoted primary's spec (as the reconciler does); 0 = none. @default 3000 */
  primaryLeaseTtlMs?: number;
  /** After a failed attempt, the next automatic one waits this long. @default 1000 */
  retryBackoffMs?: number;
  /** Entries kept per service in the fencing history. @default 500 */
  historyLimit?: number;
  /**
   * Planned switchover: how long the old primary may take to come back as a replica of the new
   * one (a clean stop, pg_rewind when needed, a restart) before the switchover says degraded. @default 60000
   */
  rejoinTimeoutMs?: number;
  /** Bound of the write that proves the new primary can commit (sync: a standby acknowledged). @default 3000 */
  commitCheckTimeoutMs?: number;
  /**
   * Planned switchover: how long the old primary's writes stay paused (engines that can pause).
   * It is restarted or removed right after the new primary is published; the bound only matters
   * when the switchover stops half-way (control lost its lead), and is long so that the next
   * leader fences it before it would take writes again. 0: never pause, always stop (the
   * behaviour of engines that cannot pause). @default 600000
   */
  pauseWritesMs?: number;
}

export const DEFAULT_FAILOVER_OPTIONS: Required<FailoverOptions> = {
  routerAckTimeoutMs: 2_000,
  orderTimeoutMs: 2_000,
  orderRunningMaxMs: 120_000,
  orderPollMs: 10,
  leaseGraceMs: 3_000,
  catchUpTimeoutMs: 10_000,
  primaryLeaseTtlMs: 3_000,
  retryBackoffMs: 1_000,
  historyLimit: 500,
  rejoinTimeoutMs: 60_000,
  commitCheckTimeoutMs: 3_000,
  pauseWritesMs: 600_000,
};
