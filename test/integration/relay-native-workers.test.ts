import { expect } from 'chai';
import { reusePortAvailable } from '../../router/reuseport';
import { freePort } from '../helpers/free-port';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { connectTo, readLine } from '../helpers/tcp-client';

const available = reusePortAvailable();
const describeAvailable = available ? describe : describe.skip;

// Two Routers in one process stand in for two `--workers` processes: SO_REUSEPORT groups
// sockets of the same user whether or not they share a process.
describeAvailable(available ? 'router workers on one port' : 'router workers on one port (skipped: the addon is not built)', function () {
  this.timeout(30_000);
  let backend: TestServer;
  const routers: RouterHarness[] = [];

  after(async () => {
    for (const r of routers) await r.stop();
    await backend?.stop();
  });

  it('lets two routers with reusePort serve the same route port, both taking connections', async () => {
    backend = await startNamedServer('b1');
    const port = await freePort();
    const table = { version: 1, routes: [{ port, backends: [{ id: 'b1', host: '127.0.0.1', port: backend.port }] }] };
    routers.push(await startRouter(table, { reusePort: true }));
    routers.push(await startRouter(table, { reusePort: true }));
    for (let i = 0; i < 40; i++) {
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('b1');
      client.destroy();
    }
    const served = routers.map((r) => r.router.routeStats().find((s) => s.port === port)!.total);
    expect(served[0]! + served[1]!).to.equal(40);
    expect(served[0]).to.be.above(0);
    expect(served[1]).to.be.above(0);
  });

  it('refuses a reuse-port listener on a port a plain listener holds', async () => {
    const port = await freePort();
    const table = { version: 1, routes: [{ port, backends: [{ id: 'b1', host: '127.0.0.1', port: backend.port }] }] };
    routers.push(await startRouter(table));
    let failed: unknown;
    try {
      routers.push(await startRouter(table, { reusePort: true }));
    } catch (err) {
      failed = err;
    }
    expect(failed).to.have.property('code', 'SF_ERR_LISTEN_FAILED');
  });
});
