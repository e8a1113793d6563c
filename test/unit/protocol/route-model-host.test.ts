import { expect } from 'chai';
import { ErrorCode, hostSyntaxProblem, parseRoute, parseRouteTable, type SfError } from '../../../router';

function errorOf(fn: () => unknown): SfError {
  try {
    fn();
  } catch (err) {
    return err as SfError;
  }
  throw new Error('expected an error');
}

function tableWithHost(host: unknown): unknown {
  return { routes: [{ port: 16000, backends: [{ host, port: 6379 }] }] };
}

describe('route-model', () => {
  describe('hostSyntaxProblem', () => {
    it('accepts IPv4, IPv6 and RFC 1123 host names', () => {
      for (const host of [
        '127.0.0.1',
        '10.1.2.3',
        '::1',
        '2001:db8::7',
        '::ffff:127.0.0.1',
        'fe80::1%eth0',
        'localhost',
        'db-1.example.com',
        'example.com.',
        'a',
        '3com.net',
        'x'.repeat(63) + '.example',
      ]) {
        expect(hostSyntaxProblem(host), host).to.equal(undefined);
      }
    });

    it('refuses empty hosts, spaces, NUL and other control characters', () => {
      expect(hostSyntaxProblem('')).to.contain('non-empty');
      for (const host of ['a b', 'a\u0000b', 'db\n', '\tdb', 'db\u007f', ' 127.0.0.1']) {
        expect(hostSyntaxProblem(host), JSON.stringify(host)).to.contain('spaces or control characters');
      }
    });

    it('refuses what is neither a host name nor an IP address', () => {
      for (const host of [
        '-db.example.com',
        'db-.example.com',
        'db..example.com',
        'db_1.example.com',
        'db.example.com/x',
        'user@db',
        'db:6379',
        '[::1]',
        'x'.repeat(64) + '.example',
        'a.'.repeat(127) + 'com',
        '1::2::3',
      ]) {
        expect(hostSyntaxProblem(host), host).to.be.a('string');
      }
    });

    it('refuses addresses getaddrinfo would read in non-canonical forms', () => {
      for (const host of ['127.1', '0x7f000001', '2130706433', '0177.0.0.1', '127.0.0.01', '1.2.3.4.5']) {
        expect(hostSyntaxProblem(host), host).to.be.a('string');
      }
    });
  });

  describe('parseRouteTable', () => {
    it('names the backend host field when its syntax is wrong', () => {
      for (const host of ['a b', 'nul\u0000byte', '', 'bad_name', '127.1']) {
        const err = errorOf(() => parseRouteTable(tableWithHost(host)));
        expect(err.code, JSON.stringify(host)).to.equal(ErrorCode.InvalidRouteTable);
        expect(err.field).to.equal('routes[0].backends[0].host');
        expect(err.message).to.match(/^routes\[0\]\.backends\[0\]\.host /);
      }
    });

    it('names the field when the host is not a string', () => {
      const err = errorOf(() => parseRouteTable(tableWithHost(7)));
      expect(err.field).to.equal('routes[0].backends[0].host');
    });

    it('names the field under the prefix of a single route', () => {
      const err = errorOf(() => parseRoute({ port: 1, backends: [{ host: 'a b', port: 2 }] }, 'route'));
      expect(err.field).to.equal('route.backends[0].host');
    });
  });
});
