import { expect } from 'chai';
import { backendTls, clientTls, parseRoute, parseRouteTable, type SfError } from '../../../router';

function errorOf(fn: () => unknown): SfError {
  try {
    fn();
  } catch (err) {
    return err as SfError;
  }
  throw new Error('expected an error');
}

const route = (tls: unknown): unknown => ({ port: 16379, backends: [{ host: '127.0.0.1', port: 6379 }], tls });

describe('route-model tls', () => {
  describe('parseRouteTable', () => {
    it('fills in the defaults of a terminating route', () => {
      const r = parseRouteTable({ routes: [route({ certFile: '/c.pem', keyFile: '/k.pem' })] }).routes[0]!;
      expect(clientTls(r)).to.deep.equal({
        mode: 'terminate',
        startup: 'tls',
        policy: 'required',
        minVersion: 'TLSv1.2',
        certFile: '/c.pem',
        keyFile: '/k.pem',
      });
      expect(backendTls(r)).to.equal(false);
    });

    it('keeps tls: true as TLS towards the backend only', () => {
      const r = parseRouteTable({ routes: [route(true)] }).routes[0]!;
      expect(backendTls(r)).to.equal(true);
      expect(clientTls(r)).to.equal(undefined);
    });

    it('takes a certificate the router presents to backends (mTLS)', () => {
      const r = parseRouteTable({
        routes: [route({ certFile: '/c', keyFile: '/k', backendCertFile: '/rc', backendKeyFile: '/rk' })],
      }).routes[0]!;
      expect(clientTls(r)).to.include({ backendCertFile: '/rc', backendKeyFile: '/rk' });
    });

    it('takes backend: true inside the settings', () => {
      const r = parseRouteTable({ routes: [route({ certFile: '/c', keyFile: '/k', backend: true })] }).routes[0]!;
      expect(backendTls(r)).to.equal(true);
    });

    it('accepts a PostgreSQL passthrough route without certificate', () => {
      const r = parseRouteTable({ routes: [route({ mode: 'passthrough', startup: 'postgres' })] }).routes[0]!;
      expect(clientTls(r)).to.include({ mode: 'passthrough', startup: 'postgres', policy: 'required' });
    });

    const cases: Array<[string, unknown, string, string]> = [
      ['a terminating route without certificate', {}, 'routes[0].tls.certFile', "is required when mode is 'terminate'"],
      [
        'a relative path',
        { certFile: 'c.pem', keyFile: '/k' },
        'routes[0].tls.certFile',
        'must be an absolute file path',
      ],
      [
        'an old TLS version',
        { certFile: '/c', keyFile: '/k', minVersion: 'TLSv1' },
        'routes[0].tls.minVersion',
        "must be 'TLSv1.2' or 'TLSv1.3'",
      ],
      [
        'an empty ALPN list',
        { certFile: '/c', keyFile: '/k', alpn: [] },
        'routes[0].tls.alpn',
        'must list at least one protocol',
      ],
      [
        'an unknown policy',
        { certFile: '/c', keyFile: '/k', policy: 'maybe' },
        'routes[0].tls.policy',
        "must be 'required' or 'optional'",
      ],
      [
        'a certificate on a passthrough route',
        { mode: 'passthrough', keyFile: '/k' },
        'routes[0].tls.keyFile',
        "applies only when mode is 'terminate'",
      ],
      [
        'an unknown field',
        { certFile: '/c', keyFile: '/k', cert: 'PEM' },
        'routes[0].tls',
        "has unknown field(s) 'cert'",
      ],
      [
        'a backend certificate without its key',
        { certFile: '/c', keyFile: '/k', backendCertFile: '/rc' },
        'routes[0].tls.backendKeyFile',
        'is required with backendCertFile',
      ],
      [
        'a backend key on a passthrough route',
        { mode: 'passthrough', backendCertFile: '/rc', backendKeyFile: '/rk' },
        'routes[0].tls.backendCertFile',
        "applies only when mode is 'terminate'",
      ],
      ['a string', 'yes', 'routes[0].tls', 'must be a boolean or a TLS settings object'],
    ];
    for (const [what, tls, field, message] of cases) {
      it(`refuses ${what}, naming the field`, () => {
        const err = errorOf(() => parseRouteTable({ routes: [route(tls)] }));
        expect(err.field).to.equal(field);
        expect(err.message).to.equal(`${field} ${message}`);
      });
    }

    it('refuses TLS settings on a port shared by server name', () => {
      const err = errorOf(() =>
        parseRouteTable({
          routes: [{ ...(route({ certFile: '/c', keyFile: '/k' }) as object), sni: ['db.example.com'] }],
        }),
      );
      expect(err.field).to.equal('routes[0].tls');
    });
  });

  describe('parseRoute', () => {
    it('prefixes the field with the API body path', () => {
      const err = errorOf(() => parseRoute(route({ certFile: '/c' }), 'route'));
      expect(err.field).to.equal('route.tls.keyFile');
    });
  });
});
