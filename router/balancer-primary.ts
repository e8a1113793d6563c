import type { Balancer } from './balancer';
import type { Backend } from '../protocol';

/**
 * `primary` mode: every client goes to the one active primary with the highest epoch. There is
 * no failover to replicas: a write must never land on a replica, so no primary means refuse.
 */
export class PrimaryBalancer implements Balancer {
  private readonly primary: Backend | undefined;

  constructor(backends: readonly Backend[]) {
    let best: Backend | undefined;
    for (const b of backends) {
      if (b.role !== 'primary' || b.state !== 'active') continue;
      if (!best || b.epoch > best.epoch) best = b;
    }
    this.primary = best;
  }

  pick(exclude: ReadonlySet<string>): Backend | undefined {
    if (!this.primary || exclude.has(this.primary.id)) return undefined;
    return this.primary;
  }

  /** The backend that primary mode serves, for fencing decisions. */
  current(): Backend | undefined {
    return this.primary;
  }
}
