import { expect } from 'chai';
import { addressBytes } from '../../../cell/fencer-network';
import { ErrorCode, type SfError } from '../../../common';

describe('NetworkFencer', function () {
  describe('addressBytes', function () {
    it('encodes IPv4 as 4 bytes', function () {
      expect(addressBytes('10.0.0.1')).to.deep.equal({ family: 2, bytes: Buffer.from([10, 0, 0, 1]), bits: 32 });
    });

    it('encodes IPv4-mapped IPv6 with the IPv4 address in the last 32 bits', function () {
      const { family, bytes, bits } = addressBytes('::ffff:10.0.0.1');
      expect(family).to.equal(10);
      expect(bits).to.equal(128);
      expect([...bytes]).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
    });

    it('expands compressed IPv6', function () {
      expect([...addressBytes('fd00::1:2').bytes]).to.deep.equal([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]);
    });

    it('refuses what is not an address, naming the field', function () {
      for (const bad of ['host.example', '10.1', '', '1.2.3.4.5']) {
        expect(() => addressBytes(bad), bad)
          .to.throw()
          .that.satisfies((e: SfError) => e.code === ErrorCode.InvalidOption && e.field === 'peers');
      }
    });
  });
});
