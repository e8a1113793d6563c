import { expect } from 'chai';
import { createPrng, shuffled } from '../../../bench/lib/fault-prng';

describe('bench column order (shuffled)', () => {
  const columns = ['direct', 'haproxy', 'router', 'haproxy-2t', 'router-t2'];

  it('returns a permutation and leaves the list alone', () => {
    const copy = [...columns];
    const out = shuffled(columns, createPrng(1));
    expect(columns).to.deep.equal(copy);
    expect([...out].sort()).to.deep.equal([...columns].sort());
  });

  it('replays the same orders from the same seed, and gives every column every position', () => {
    const a = createPrng(42);
    const b = createPrng(42);
    const firsts = new Set<string>();
    const lasts = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const x = shuffled(columns, a);
      expect(shuffled(columns, b)).to.deep.equal(x);
      firsts.add(x[0]);
      lasts.add(x[x.length - 1]);
    }
    // A rotation would do this too; what it never does is change who follows whom.
    expect(firsts.size).to.equal(columns.length);
    expect(lasts.size).to.equal(columns.length);
  });

  it('puts a column after each of the others, not always after the same one', () => {
    const prng = createPrng(7);
    const before = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const x = shuffled(columns, prng);
      const at = x.indexOf('router-t2');
      if (at > 0) before.add(x[at - 1]);
    }
    expect(before.size).to.equal(columns.length - 1);
  });
});
