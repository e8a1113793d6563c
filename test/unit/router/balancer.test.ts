import { expect } from 'chai';
import { LeastConnBalancer } from '../../../router/balancer-least-conn';
import { PrimaryBalancer } from '../../../router/balancer-primary';
import { RoundRobinBalancer } from '../../../router/balancer-round-robin';
import { parseRoute, type Backend } from '../../../router';

function backends(...specs: Array<Partial<Backend> & { id: string }>): Backend[] {
  return parseRoute({ port: 1, backends: specs.map((s, i) => ({ host: '127.0.0.1', port: 1000 + i, ...s })) }).backends;
}

const none = new Set<string>();

describe('balancers', () => {
  describe('RoundRobinBalancer', () => {
    it('spreads picks by weight without bursts', () => {
      const rr = new RoundRobinBalancer(
        backends({ id: 'a', weight: 5 }, { id: 'b', weight: 1 }, { id: 'c', weight: 1 }),
      );
      const picks = Array.from({ length: 7 }, () => rr.pick(none)!.id).join('');
      expect(picks).to.equal('aabacaa');
    });

    it('skips draining, fenced, zero-weight and excluded backends', () => {
      const rr = new RoundRobinBalancer(
        backends(
          { id: 'a', state: 'draining' },
          { id: 'b', state: 'fenced' },
          { id: 'c', weight: 0 },
          { id: 'd' },
          { id: 'e' },
        ),
      );
      expect(rr.pick(new Set(['d']))!.id).to.equal('e');
      expect(rr.pick(new Set(['d', 'e']))).to.equal(undefined);
    });
  });

  describe('LeastConnBalancer', () => {
    it('picks the backend with the fewest connections per weight', () => {
      const active: Record<string, number> = { a: 4, b: 1, c: 3 };
      const lc = new LeastConnBalancer(backends({ id: 'a', weight: 4 }, { id: 'b' }, { id: 'c', weight: 1 }), {
        active: (id) => active[id] ?? 0,
      });
      // a: 4/4 = 1, b: 1/1 = 1, c: 3/1 = 3 -> a or b
      expect(['a', 'b']).to.include(lc.pick(none)!.id);
      active.b = 2;
      expect(lc.pick(none)!.id).to.equal('a');
    });
  });

  describe('PrimaryBalancer', () => {
    it('serves the active primary with the highest epoch, never a replica', () => {
      const p = new PrimaryBalancer(
        backends({ id: 'old', epoch: 1 }, { id: 'new', epoch: 2 }, { id: 'r', role: 'replica', epoch: 9 }),
      );
      expect(p.pick(none)!.id).to.equal('new');
      expect(p.pick(new Set(['new']))).to.equal(undefined);
    });

    it('has nothing to serve when the primary is fenced', () => {
      const p = new PrimaryBalancer(backends({ id: 'a', state: 'fenced' }, { id: 'r', role: 'replica' }));
      expect(p.pick(none)).to.equal(undefined);
    });
  });
});
