import { expect } from 'chai';
import {
  CANCEL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  SSL_REQUEST_CODE,
  parsePostgresPreamble,
  postgresErrorResponse,
} from '../../../router/postgres-preamble';

function packet(length: number, code: number, extra = 0): Buffer {
  const b = Buffer.alloc(8 + extra);
  b.writeInt32BE(length, 0);
  b.writeInt32BE(code, 4);
  return b;
}

describe('postgres-preamble', () => {
  describe('parsePostgresPreamble', () => {
    it('needs 8 bytes before deciding', () => {
      expect(parsePostgresPreamble(packet(8, SSL_REQUEST_CODE).subarray(0, 7)).kind).to.equal('need-more');
    });
    it('reads an SSLRequest (length 8, code 80877103)', () => {
      expect(parsePostgresPreamble(packet(8, SSL_REQUEST_CODE)).kind).to.equal('ssl-request');
    });
    it('reads a GSSENCRequest', () => {
      expect(parsePostgresPreamble(packet(8, GSSENC_REQUEST_CODE)).kind).to.equal('gssenc-request');
    });
    it('reads a CancelRequest', () => {
      expect(parsePostgresPreamble(packet(16, CANCEL_REQUEST_CODE, 8)).kind).to.equal('cancel-request');
    });
    it('takes a protocol 3.0 StartupMessage for plaintext', () => {
      expect(parsePostgresPreamble(packet(40, 196608, 32)).kind).to.equal('plaintext');
    });
    it('takes an SSLRequest code with the wrong length for plaintext', () => {
      expect(parsePostgresPreamble(packet(9, SSL_REQUEST_CODE, 1)).kind).to.equal('plaintext');
    });
    it('recognizes a direct ClientHello from its first byte', () => {
      expect(parsePostgresPreamble(Buffer.from([0x16])).kind).to.equal('direct-tls');
    });
  });

  describe('postgresErrorResponse', () => {
    it('frames an ErrorResponse with severity, SQLSTATE and message', () => {
      const b = postgresErrorResponse('28000', 'no');
      expect(b.toString('latin1', 0, 1)).to.equal('E');
      expect(b.readInt32BE(1)).to.equal(b.length - 1);
      expect(b.toString('utf8', 5)).to.equal('SFATAL\0VFATAL\0C28000\0Mno\0\0');
    });
  });
});
