import { expect } from 'chai';
import { hostMatches, parseClientHelloSni } from '../../../router';
import { captureClientHello } from '../../helpers/client-hello';

describe('sni', () => {
  describe('parseClientHelloSni', () => {
    it('reads the server name from a real ClientHello', async () => {
      const hello = await captureClientHello('DB.Example.com');
      expect(parseClientHelloSni(hello)).to.deep.equal({ kind: 'done', serverName: 'db.example.com' });
    });

    it('asks for more bytes while the record is incomplete', async () => {
      const hello = await captureClientHello('db.example.com');
      expect(parseClientHelloSni(hello.subarray(0, 3))).to.deep.equal({ kind: 'need-more' });
      expect(parseClientHelloSni(hello.subarray(0, hello.length - 1))).to.deep.equal({ kind: 'need-more' });
    });

    it('reports a ClientHello without a server name', async () => {
      const hello = await captureClientHello(undefined);
      expect(parseClientHelloSni(hello)).to.deep.equal({ kind: 'done', serverName: undefined });
    });

    it('says not-tls for a plaintext protocol', () => {
      expect(parseClientHelloSni(Buffer.from('*1\r\n$4\r\nPING\r\n'))).to.deep.equal({ kind: 'not-tls' });
    });
  });

  describe('hostMatches', () => {
    it('matches exact names and one-label wildcards', () => {
      expect(hostMatches('db.example.com', 'db.example.com')).to.equal(true);
      expect(hostMatches('*.example.com', 'db.example.com')).to.equal(true);
      expect(hostMatches('*.example.com', 'a.db.example.com')).to.equal(false);
      expect(hostMatches('*.example.com', 'example.com')).to.equal(false);
      expect(hostMatches('DB.example.com', 'db.example.com')).to.equal(true);
    });
  });
});
