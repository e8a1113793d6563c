import { expect } from 'chai';
import { CellAgent } from '../../../cell/cell-agent';
import { defaultHeartbeatMs } from '../../../cell/cell-agent-defaults';
import { ErrorCode } from '../../../common/errors';

describe('CellAgent', () => {
  describe('constructor', () => {
    const base = { name: 'c1', zone: 'z1', capacityMb: 1024, dataDir: '/tmp/sf-unused' };

    it('names the offending field of invalid options', () => {
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ name: 'bad name' }, 'name'],
        [{ zone: '' }, 'zone'],
        [{ capacityMb: 0 }, 'capacityMb'],
        [{ redisUrl: 'http://x' }, 'redisUrl'],
        [{ portRange: { from: 9, to: 1 } }, 'portRange'],
        [{ heartbeatMs: 1000, heartbeatTtlMs: 500 }, 'heartbeatTtlMs'],
      ];
      for (const [patch, field] of cases) {
        expect(() => new CellAgent({ ...base, ...patch } as never), field)
          .to.throw()
          .that.includes({ code: ErrorCode.InvalidOption, field });
      }
    });

    it('derives the heartbeat period from the TTL when none is given, so a short TTL alone is valid', () => {
      expect(defaultHeartbeatMs(3000)).to.equal(1500);
      expect(defaultHeartbeatMs(500)).to.equal(250);
      const agent = new CellAgent({ ...base, heartbeatTtlMs: 500 });
      expect(agent.record()).to.include({ heartbeatTtlMs: 500 });
      // A period given is kept, and still has to be shorter than the TTL.
      expect(() => new CellAgent({ ...base, heartbeatTtlMs: 500, heartbeatMs: 500 }))
        .to.throw()
        .that.includes({ code: ErrorCode.InvalidOption, field: 'heartbeatTtlMs' });
    });

    it('accepts defaults for everything but name, zone and capacity', () => {
      const agent = new CellAgent(base);
      expect(agent.name).to.equal('c1');
      expect(agent.record()).to.include({ zone: 'z1', capacityMb: 1024, host: '127.0.0.1', heartbeatTtlMs: 3000 });
      expect(agent.record().portRange).to.deep.equal({ from: 20000, to: 20999 });
    });
  });
});
