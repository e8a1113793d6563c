import { expect } from 'chai';
import { parseRoute } from '../../../router';
import { loadNativeBindings } from '../../../native-bindings';
import { nativeBackendTls, routeJsReason } from '../../../router/native-accept';

const files = { certFile: '/etc/sf/router.crt', keyFile: '/etc/sf/router.key' };
const route = (extra: object): ReturnType<typeof parseRoute> =>
  parseRoute({ port: 6380, backends: [{ host: '127.0.0.1', port: 6379 }], ...extra });

describe('which path a route port takes (routeJsReason)', () => {
  const saved = process.env.SF_NATIVE_TLS;
  afterEach(() => {
    if (saved === undefined) delete process.env.SF_NATIVE_TLS;
    else process.env.SF_NATIVE_TLS = saved;
  });

  it('accepts plain routes and routes terminating TLS with their clients natively', () => {
    expect(routeJsReason(route({}))).to.equal(undefined);
    expect(routeJsReason(route({ tls: files }))).to.equal(undefined);
    expect(routeJsReason(route({ tls: { ...files, startup: 'postgres', clientCaFile: '/etc/sf/ca.pem' } }))).to.equal(
      undefined,
    );
  });

  it('accepts routes with TLS towards their backends natively when the addon connects over TLS itself', () => {
    const expected = nativeBackendTls() ? undefined : 'backend-tls';
    expect(routeJsReason(route({ tls: { ...files, backend: true } }))).to.equal(expected);
    expect(routeJsReason(route({ tls: true }))).to.equal(expected);
    expect(
      routeJsReason(parseRoute({ port: 6380, backends: [{ host: '127.0.0.1', port: 6379, tls: true }], tls: files })),
    ).to.equal(expected);
    // The addon built in this tree supports it: a build that lost it would send every route of
    // `sf up` (TLS-only engines) to the JS path.
    if (loadNativeBindings() !== undefined) expect(nativeBackendTls()).to.equal(true);
  });

  it('keeps passthrough on the JS path, naming why', () => {
    expect(routeJsReason(route({ tls: { mode: 'passthrough' } }))).to.equal('tls-passthrough');
  });

  it('keeps termination in JS with SF_NATIVE_TLS=off', () => {
    process.env.SF_NATIVE_TLS = 'off';
    expect(routeJsReason(route({ tls: files }))).to.equal('tls');
    expect(routeJsReason(route({ tls: { ...files, backend: true } }))).to.equal('tls');
    expect(routeJsReason(route({}))).to.equal(undefined);
  });
});
