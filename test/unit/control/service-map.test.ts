import { expect } from 'chai';
import { ServiceMap } from '../../../control/services/service-map';
import type { ServiceRecord } from '../../../control/services/service-types';

function rec(name: string, port: number): ServiceRecord {
  return { name, port } as unknown as ServiceRecord;
}

describe('ServiceMap', () => {
  describe('with', () => {
    it('matches a plain Map through adds, replacements and removals, and leaves older versions as they were', () => {
      let rnd = 7;
      const next = (n: number): number => {
        rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
        return rnd % n;
      };
      const model = new Map<string, ServiceRecord>();
      let map = ServiceMap.of(new Map());
      const versions: Array<[ServiceMap, Map<string, ServiceRecord>]> = [];
      // Enough changes to fold the overlay into a new base more than once.
      for (let step = 0; step < 3_000; step++) {
        const changes = new Map<string, ServiceRecord | null>();
        for (let k = 0; k < 1 + next(3); k++) {
          const name = `s${next(400)}`;
          const value = next(4) === 0 ? null : rec(name, step);
          changes.set(name, value);
        }
        for (const [name, value] of changes) {
          if (value) model.set(name, value);
          else model.delete(name);
        }
        map = map.with(changes);
        if (step % 500 === 0) versions.push([map, new Map(model)]);
      }
      versions.push([map, model]);
      for (const [version, expected] of versions) {
        expect(version.size).to.equal(expected.size);
        expect(new Map(version)).to.deep.equal(expected);
        expect([...version.keys()].sort()).to.deep.equal([...expected.keys()].sort());
        for (let i = 0; i < 400; i++) {
          expect(version.has(`s${i}`)).to.equal(expected.has(`s${i}`));
          expect(version.get(`s${i}`)).to.equal(expected.get(`s${i}`));
        }
      }
    });
  });
});
