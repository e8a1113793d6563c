import type { Balancer } from './balancer';
import { isEligible, type Backend } from '../protocol';

/**
 * Smooth weighted round-robin (the nginx algorithm): spreads picks evenly in proportion to
 * weight without bursts, e.g. weights 5,1,1 give a a b a c a a rather than a a a a a b c.
 */
export class RoundRobinBalancer implements Balancer {
  private readonly backends: Backend[];
  private readonly current: number[];

  constructor(backends: readonly Backend[]) {
    this.backends = backends.filter((b) => isEligible(b) && b.weight > 0);
    this.current = this.backends.map(() => 0);
  }

  pick(exclude: ReadonlySet<string>): Backend | undefined {
    let total = 0;
    let bestIndex = -1;
    for (let i = 0; i < this.backends.length; i++) {
      const b = this.backends[i]!;
      if (exclude.has(b.id)) continue;
      this.current[i]! += b.weight;
      total += b.weight;
      if (bestIndex < 0 || this.current[i]! > this.current[bestIndex]!) bestIndex = i;
    }
    if (bestIndex < 0) return undefined;
    this.current[bestIndex]! -= total;
    return this.backends[bestIndex];
  }
}
