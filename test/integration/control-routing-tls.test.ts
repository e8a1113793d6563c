/**
 * Route TLS settings through control's routing API: accepted into the pushed table as given,
 * and refused with a 400 naming the inner field when invalid.
 */
import { expect } from 'chai';
import { startControlHarness, type ControlHarness } from '../helpers/control-harness';

interface ErrorReply {
  error: { code: string; message: string; field?: string };
}

describe('control routing API with route TLS settings', function () {
  this.timeout(60_000);
  let h: ControlHarness;
  const route = (port: number, tls: unknown) => ({
    router_group_guid: h.defaultGroup,
    port,
    backend_ip: '127.0.0.1',
    backend_port: 6379,
    tls,
  });

  before(async () => {
    h = await startControlHarness();
  });
  after(async () => {
    await h?.stop();
  });

  it('keeps a terminating route in the table the routers get', async () => {
    const tls = { certFile: '/etc/sf/router.crt', keyFile: '/etc/sf/router.key', startup: 'postgres' };
    const res = await h.api('POST', '/routing/v1/tcp_routes/create', [route(16101, tls)]);
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    const table = (
      await h.api<{ routes: Array<{ port: number; tls?: unknown }> }>(
        'GET',
        `/routing/v1/router_groups/${h.defaultGroup}/table`,
      )
    ).body;
    expect(table.routes.find((r) => r.port === 16101)?.tls).to.include(tls);
  });

  it('answers 400 naming the field inside tls', async () => {
    const res = await h.api('POST', '/routing/v1/tcp_routes/create', [
      route(16102, { certFile: '/c', keyFile: '/k', minVersion: 'TLSv1.1' }),
    ]);
    expect(res.status).to.equal(400);
    expect((res.body as ErrorReply).error.field).to.equal('tcp_routes[0].tls.minVersion');
    const missing = await h.api('POST', '/routing/v1/tcp_routes/create', [route(16103, { certFile: '/c' })]);
    expect((missing.body as ErrorReply).error.field).to.equal('tcp_routes[0].tls.keyFile');
  });
});
