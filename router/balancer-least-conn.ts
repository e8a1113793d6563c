import type { Balancer, BalancerContext } from './balancer';
import { isEligible, type Backend } from '../protocol';

/**
 * Least connections, weighted: the backend with the lowest active/weight wins; ties rotate so
 * that an idle pool is still spread evenly.
 */
export class LeastConnBalancer implements Balancer {
  private readonly backends: Backend[];
  private tieBreak = 0;

  constructor(
    backends: readonly Backend[],
    private readonly context: BalancerContext,
  ) {
    this.backends = backends.filter((b) => isEligible(b) && b.weight > 0);
  }

  pick(exclude: ReadonlySet<string>): Backend | undefined {
    const n = this.backends.length;
    let best: Backend | undefined;
    let bestLoad = Infinity;
    const start = this.tieBreak++ % Math.max(n, 1);
    for (let k = 0; k < n; k++) {
      const b = this.backends[(start + k) % n]!;
      if (exclude.has(b.id)) continue;
      const load = this.context.active(b.id) / b.weight;
      if (load < bestLoad) {
        best = b;
        bestLoad = load;
      }
    }
    return best;
  }
}
