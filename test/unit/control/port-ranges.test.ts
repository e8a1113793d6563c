import { expect } from 'chai';
import {
  parsePortRanges,
  parseReservablePorts,
  rangesContain,
  rangesOverlap,
} from '../../../control/state/port-ranges';

describe('port-ranges', function () {
  describe('parsePortRanges', function () {
    it('parses ranges and single ports', function () {
      expect(parsePortRanges('16000-16999, 20000')).to.deep.equal([
        [16000, 16999],
        [20000, 20000],
      ]);
    });

    it('refuses reversed, out-of-range and malformed parts naming the field', function () {
      for (const bad of ['2-1', '0-10', '1-70000', 'a-b', ' , ', '1,,2']) {
        expect(() => parsePortRanges(bad), bad)
          .to.throw()
          .with.property('field', 'reservable_ports');
      }
    });

    it('gives an empty text (an http router group) no ports', function () {
      expect(parsePortRanges('')).to.deep.equal([]);
    });
  });

  describe('parseReservablePorts', function () {
    it("applies Cloud Foundry's rules: 1024-65535, no overlap inside the group, not empty", function () {
      expect(parseReservablePorts('1024-1100,5000')).to.deep.equal([
        [1024, 1100],
        [5000, 5000],
      ]);
      for (const bad of ['1023', '80-2000', '2000-3000,2500', '5000,5000', '']) {
        expect(() => parseReservablePorts(bad), bad)
          .to.throw()
          .with.property('field', 'reservable_ports');
      }
    });
  });

  describe('rangesContain', function () {
    it('includes both ends', function () {
      const r = parsePortRanges('10-20');
      expect([9, 10, 20, 21].map((p) => rangesContain(r, p))).to.deep.equal([false, true, true, false]);
    });
  });

  describe('rangesOverlap', function () {
    it('returns the first shared port or null', function () {
      expect(rangesOverlap(parsePortRanges('10-20'), parsePortRanges('20-30'))).to.equal(20);
      expect(rangesOverlap(parsePortRanges('10-19'), parsePortRanges('20-30'))).to.equal(null);
    });
  });
});
