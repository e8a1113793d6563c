import { expect } from 'chai';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';
import { freePort, freePortInRange } from '../helpers/free-port';
import { runSf, waitForHealth, type SfProcess, routerAdminJson } from '../helpers/sf-process';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { connectTo, eventually, readLine } from '../helpers/tcp-client';

describe('sf router --control', function () {
  this.timeout(60_000);
  let harness: ControlHarness;
  let backend: TestServer;
  let router: SfProcess;
  let adminPort: number;

  before(async () => {
    harness = await startControlHarness();
    backend = await startNamedServer('backend');
    adminPort = await freePort();
    router = runSf(['router', '--control', harness.control.url, '--admin', `127.0.0.1:${adminPort}`], {
      SF_API_TOKEN: ADMIN_TOKEN,
    });
    await waitForHealth(adminPort);
  });

  after(async () => {
    await router?.stop();
    await backend?.stop();
    await harness?.stop();
  });

  it('finds Redis through control and serves a route created through the API', async () => {
    const port = await freePortInRange(16000, 16999);
    const res = await harness.api('POST', '/routing/v1/tcp_routes/create', [
      { router_group_guid: harness.defaultGroup, port, backend_ip: '127.0.0.1', backend_port: backend.port, ttl: 120 },
    ]);
    expect(res.status).to.be.oneOf([200, 201]);
    await eventually(
      async () => {
        const table = (await routerAdminJson(adminPort, '/routes', ADMIN_TOKEN)) as {
          routes: Array<{ port: number }>;
        };
        return table.routes.some((r) => r.port === port);
      },
      5000,
      'route pushed to the router',
    );
    const client = await connectTo(port);
    expect(await readLine(client)).to.equal('backend');
    client.destroy();
  });
});
