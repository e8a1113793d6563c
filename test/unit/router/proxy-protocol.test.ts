import { expect } from 'chai';
import { proxyHeaderV1, proxyHeaderV2 } from '../../../router';

const v4 = {
  sourceAddress: '::ffff:10.0.0.1',
  sourcePort: 56324,
  destinationAddress: '127.0.0.1',
  destinationPort: 16379,
};

describe('proxy-protocol', () => {
  describe('proxyHeaderV1', () => {
    it('writes TCP4 with IPv4-mapped addresses unmapped', () => {
      expect(proxyHeaderV1(v4).toString()).to.equal('PROXY TCP4 10.0.0.1 127.0.0.1 56324 16379\r\n');
    });

    it('writes UNKNOWN for mixed families', () => {
      expect(proxyHeaderV1({ ...v4, destinationAddress: '::1' }).toString()).to.equal('PROXY UNKNOWN\r\n');
    });
  });

  describe('proxyHeaderV2', () => {
    it('writes the signature, PROXY command, TCP over IPv4 and the addresses', () => {
      const h = proxyHeaderV2(v4);
      expect(h.length).to.equal(28);
      expect(h.subarray(0, 12).toString('hex')).to.equal('0d0a0d0a000d0a515549540a');
      expect(h[12]).to.equal(0x21);
      expect(h[13]).to.equal(0x11);
      expect(h.readUInt16BE(14)).to.equal(12);
      expect([...h.subarray(16, 20)]).to.deep.equal([10, 0, 0, 1]);
      expect(h.readUInt16BE(24)).to.equal(56324);
      expect(h.readUInt16BE(26)).to.equal(16379);
    });

    it('writes TCP over IPv6 with compressed addresses expanded', () => {
      const h = proxyHeaderV2({
        sourceAddress: '2001:db8::1',
        sourcePort: 1,
        destinationAddress: '::1',
        destinationPort: 2,
      });
      expect(h[13]).to.equal(0x21);
      expect(h.readUInt16BE(14)).to.equal(36);
      expect(h.subarray(16, 32).toString('hex')).to.equal('20010db8000000000000000000000001');
      expect(h.subarray(32, 48).toString('hex')).to.equal('00000000000000000000000000000001');
    });
  });
});
