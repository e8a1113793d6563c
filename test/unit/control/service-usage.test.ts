import { expect } from 'chai';
import { ServiceUsage } from '../../../control/services/service-usage';
import type { ServiceRecord } from '../../../control/services/service-types';

function svc(name: string, port: number, cells: string[], sizeMb = 100, group = 'g1'): ServiceRecord {
  return {
    name,
    port,
    routerGroupGuid: group,
    volume: { sizeMb },
    instances: cells.map((cell, k) => ({ id: `${name}-${k}`, cell })),
  } as unknown as ServiceRecord;
}

const RANGES = [[16000, 16009]] as const;

describe('ServiceUsage', () => {
  describe('promisedMb', () => {
    it('sums the volumes records place on each cell, and follows replacements and removals', () => {
      const a = svc('a', 16000, ['c1', 'c2']);
      const usage = ServiceUsage.of([a, svc('b', 16001, ['c1'], 50)]);
      expect(usage.promisedMb('c1')).to.equal(150);
      expect(usage.promisedMb('c2')).to.equal(100);
      usage.replace(a, svc('a', 16000, ['c3']));
      expect(usage.promisedMb('c1')).to.equal(50);
      expect(usage.promisedMb('c2')).to.equal(0);
      expect(usage.promisedMb('c3')).to.equal(100);
    });
  });

  describe('freePorts', () => {
    it('gives the lowest ports no service of the group holds, skipping the ones asked', () => {
      const usage = ServiceUsage.of([svc('a', 16000, []), svc('b', 16002, []), svc('x', 16001, [], 1, 'g2')]);
      expect(usage.freePorts('g1', RANGES, 3, new Set())).to.deep.equal([16001, 16003, 16004]);
      expect(usage.freePorts('g1', RANGES, 2, new Set([16001]))).to.deep.equal([16003, 16004]);
      expect(usage.freePorts('g2', RANGES, 1, new Set())).to.deep.equal([16000]);
    });

    it('finds a port released below the ports it scanned past', () => {
      const records = Array.from({ length: 8 }, (_, i) => svc(`s${i}`, 16000 + i, []));
      const usage = ServiceUsage.of(records);
      expect(usage.freePorts('g1', RANGES, 1, new Set())).to.deep.equal([16008]);
      usage.replace(undefined, svc('s8', 16008, []));
      expect(usage.freePorts('g1', RANGES, 1, new Set())).to.deep.equal([16009]);
      usage.replace(records[3], null);
      expect(usage.freePorts('g1', RANGES, 1, new Set())).to.deep.equal([16003]);
      usage.replace(undefined, svc('s9', 16009, []));
      usage.replace(undefined, svc('s3', 16003, []));
      expect(usage.freePorts('g1', RANGES, 1, new Set())).to.deep.equal([]);
    });

    it('keeps the order of the ranges and each one apart', () => {
      const usage = ServiceUsage.of([svc('a', 20000, [])]);
      const ranges = [
        [20000, 20001],
        [16000, 16001],
      ] as const;
      expect(usage.freePorts('g1', ranges, 3, new Set())).to.deep.equal([20001, 16000, 16001]);
      usage.replace(undefined, svc('b', 20001, []));
      expect(usage.freePorts('g1', ranges, 1, new Set())).to.deep.equal([16000]);
      expect(usage.freePorts('g1', [[16000, 16001]], 1, new Set())).to.deep.equal([16000]);
    });
  });
});
