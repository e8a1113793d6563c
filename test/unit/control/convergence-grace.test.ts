import { expect } from 'chai';
import { CellGrace } from '../../../control/convergence/convergence-loop';
import { primaryLossReason } from '../../../control/convergence/service-reconciler';

describe('CellGrace', () => {
  const cellsWithTtl = (ttl: number, name = 'a') => [{ name, alive: true, record: { heartbeatTtlMs: ttl } }];

  describe('active', () => {
    it('lasts while no cell has registered in the term, then twice the TTL from the first live cell', () => {
      let now = 1_000;
      const grace = new CellGrace(0, () => now);
      const none = [{ name: 'b', alive: false, record: null }];
      expect(grace.active(7, none)).to.equal(true);
      now += 60_000;
      // A whole platform restarting: still nothing to judge, nothing to fail over to.
      expect(grace.active(7, none)).to.equal(true);
      expect(grace.active(7, cellsWithTtl(3_000))).to.equal(true);
      now += 5_999;
      expect(grace.active(7, [...cellsWithTtl(3_000), ...none])).to.equal(true);
      now += 1;
      expect(grace.active(7, [...cellsWithTtl(3_000), ...none])).to.equal(false);
    });

    it('follows the longest TTL the cells announce, and the configured floor', () => {
      let now = 0;
      const short = new CellGrace(0, () => now);
      expect(short.active(1, cellsWithTtl(1_000))).to.equal(true);
      now = 2_000;
      expect(short.active(1, cellsWithTtl(1_000))).to.equal(false);
      now = 0;
      const configured = new CellGrace(10_000, () => now);
      configured.active(1, cellsWithTtl(1_000));
      now = 9_999;
      expect(configured.active(1, cellsWithTtl(1_000))).to.equal(true);
    });

    it('starts again when another cell registers while it is open, so cells restarted together all come back', () => {
      let now = 0;
      const grace = new CellGrace(0, () => now);
      const down = (name: string) => ({ name, alive: false, record: null });
      expect(grace.active(1, [...cellsWithTtl(1_000, 'a'), down('b'), down('c')])).to.equal(true);
      now = 1_900;
      expect(grace.active(1, [...cellsWithTtl(1_000, 'a'), ...cellsWithTtl(1_000, 'b'), down('c')])).to.equal(true);
      // 3.8 s after the first cell, 1.9 s after the second: c is still waited for.
      now = 3_800;
      expect(grace.active(1, [...cellsWithTtl(1_000, 'a'), ...cellsWithTtl(1_000, 'b'), down('c')])).to.equal(true);
      now = 3_900;
      expect(grace.active(1, [...cellsWithTtl(1_000, 'a'), ...cellsWithTtl(1_000, 'b'), down('c')])).to.equal(false);
      // Once closed, a cell that comes back does not reopen it: a cell that dies later is judged.
      now = 4_000;
      expect(grace.active(1, [...cellsWithTtl(1_000, 'a'), ...cellsWithTtl(1_000, 'c'), down('b')])).to.equal(false);
    });

    it('starts again with every new leadership term (a standby taking over, a restarted control)', () => {
      let now = 0;
      const grace = new CellGrace(0, () => now);
      grace.active(1, cellsWithTtl(1_000));
      now = 10_000;
      expect(grace.active(1, cellsWithTtl(1_000))).to.equal(false);
      expect(grace.active(2, cellsWithTtl(1_000))).to.equal(true);
    });
  });
});

describe('primaryLossReason', () => {
  const grace = { cellGrace: true };
  const judged = { cellGrace: false };
  const running = { state: 'running', leaseHeld: false };

  it('does not judge a missing cell dead during the grace, and does after it', () => {
    expect(primaryLossReason({}, false, undefined, grace)).to.equal(null);
    expect(primaryLossReason({}, false, undefined, judged)).to.equal('cell-dead');
  });

  it('does not take an unrenewed lease for a loss during the grace', () => {
    expect(primaryLossReason({}, true, running, grace)).to.equal(null);
    expect(primaryLossReason({}, true, running, judged)).to.equal('lease-lost');
  });

  it('still acts on what a live cell reports, and resumes a recorded fence', () => {
    expect(primaryLossReason({}, true, { state: 'failed', leaseHeld: null }, grace)).to.equal('instance-failed');
    const fenced = { fenced: { epoch: 3, at: 0, trigger: 'operator-fence', complete: false } };
    expect(primaryLossReason(fenced, false, undefined, grace)).to.equal('fenced');
    expect(primaryLossReason(fenced, true, undefined, grace)).to.equal('fenced');
  });
});
