/**
 * What the leader does when a service's primary is lost (its cell's registration expired, or the
 * cell reports the primary failed). The interface lives here, below convergence and failover:
 * the reconciler calls it, and failover/fencing-coordinator.ts implements it (fence the old
 * primary first — epoch bump in the route table, SIGKILL order, lease floor, network fence — and
 * only then promote the most up-to-date replica). The report-only coordinator below promotes
 * nothing: it marks the service degraded and leaves the route alone, for operators who want a
 * human in the loop and for tests of convergence alone.
 */
import type { LeaderFence } from '../leader/fenced-commit';
import type { CellSnapshot } from './cell-directory';
import type { InstanceRecord, ServiceRecord } from './service-types';

/**
 * `lease-lost`: the primary runs but its cell stopped renewing its lease (unhealthy engine);
 * `fenced`: fencing has marked the primary (InstanceRecord.fenced) and promotion is pending.
 */
export type PrimaryLossReason = 'cell-dead' | 'instance-failed' | 'lease-lost' | 'fenced';

export interface PrimaryLoss {
  service: ServiceRecord;
  primary: InstanceRecord;
  reason: PrimaryLossReason;
  /** The leader's fence; every write the coordinator makes must carry it. */
  fence: LeaderFence;
  cells: ReadonlyMap<string, CellSnapshot>;
}

export type FailoverOutcome =
  /** Nothing was changed: the reconciler marks the service degraded with this message. */
  | { kind: 'degraded'; message: string }
  /** The coordinator is acting (or has acted) on the service itself; the reconciler leaves it be. */
  | { kind: 'handling' }
  /** Not lost after all (e.g. a lease gap shorter than its TTL): converge as usual. */
  | { kind: 'healthy' };

export interface FailoverCoordinator {
  /** Called on every convergence pass while the primary stays lost; must be idempotent. */
  primaryLost(loss: PrimaryLoss): Promise<FailoverOutcome>;
}

/** The default until fencing exists: report, never promote. */
export class DegradedFailoverCoordinator implements FailoverCoordinator {
  async primaryLost(loss: PrimaryLoss): Promise<FailoverOutcome> {
    if (loss.reason === 'lease-lost') return { kind: 'healthy' };
    const why =
      loss.reason === 'cell-dead'
        ? `its cell ${loss.primary.cell} stopped heartbeating`
        : `it failed on cell ${loss.primary.cell}`;
    return {
      kind: 'degraded',
      message: `primary ${loss.primary.id} is lost (${why}); no automatic failover is configured, replicas keep their data`,
    };
  }
}
