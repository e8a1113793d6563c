/**
 * What the leader does when a service's primary is lost (its cell's registration expired, or the
 * cell reports the primary failed). Fencing and promotion are issue 5: its coordinator fences the
 * old primary (epoch bump in the route table, SIGKILL order, network fence) and only then promotes
 * the most up-to-date replica. Until then the default below does NOT promote anything: it reports
 * the service degraded, so operators see the loss, and leaves the route alone.
 */
import type { LeaderFence } from '../leader/fenced-commit';
import type { CellSnapshot } from '../services/cell-directory';
import type { InstanceRecord, ServiceRecord } from '../services/service-types';

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
