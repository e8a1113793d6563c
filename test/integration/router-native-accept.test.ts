import { expect } from 'chai';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { freePort } from '../helpers/free-port';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, readLine, sleep } from '../helpers/tcp-client';
import { createNativeRelay } from '../../router/relay-native';
import type { RouteInput } from '../../router';

/**
 * What only the native accept path has: which path serves each port, the switch of a native port
 * to the JS path when its route starts needing JavaScript, and fencing of a connection that is
 * connected by native code alone (no net.Socket ever existed for it).
 */
describe('router native accept path', function () {
  this.timeout(30_000);
  let a: TestServer;
  let b: TestServer;
  let harness: RouterHarness | undefined;

  before(function () {
    if (process.env.SF_RELAY === 'js' || createNativeRelay() === undefined) this.skip(); // the JS relay has no native accept path; the suite runs with SF_RELAY=native
  });

  beforeEach(async () => {
    a = await startNamedServer('a');
    b = await startNamedServer('b');
  });

  afterEach(async () => {
    await harness?.stop();
    harness = undefined;
    await a.stop();
    await b.stop();
  });

  const plain = (port: number, over: Partial<RouteInput> = {}): RouteInput => ({
    port,
    backends: [{ id: 'a', host: '127.0.0.1', port: a.port, epoch: 1 }],
    ...over,
  });

  it('accepts plain ports natively and keeps PROXY-header and host-name ports on the JS path, per port', async () => {
    const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
    harness = await startRouter({
      version: 1,
      routes: [
        plain(p1),
        plain(p2, { proxyProtocol: 1 }),
        { port: p3, backends: [{ id: 'b', host: 'localhost', port: b.port }] },
      ],
    });
    const status = harness.router.status();
    expect(status.accept.native).to.equal(1);
    expect(status.accept.js).to.equal(2);
    expect(status.accept.jsPorts).to.deep.include.members([
      { port: p2, reason: 'proxy-protocol' },
      { port: p3, reason: 'host-name' },
    ]);
    const client = await connectTo(p1);
    expect(await readLine(client)).to.equal('a');
    expect(harness.router.routeStats().find((s) => s.port === p1)).to.include({ active: 1, total: 1 });
    client.destroy();
  });

  it('moves a native port to the JS path when its route gains a PROXY header, and serves it there', async () => {
    const port = await freePort();
    harness = await startRouter({ version: 1, routes: [plain(port)] });
    expect(harness.router.status().accept.native).to.equal(1);
    await harness.reload({ version: 2, routes: [plain(port, { proxyProtocol: 2 })] });
    expect(harness.router.status().accept).to.include({ native: 0, js: 1 });
    const before = a.bytesReceived;
    const client = await connectTo(port);
    expect(await readLine(client)).to.equal('a');
    client.write('x\n');
    await sleep(100);
    // A PROXY v2 header for IPv4 (28 bytes) reached the backend ahead of the client's 2 bytes.
    expect(a.bytesReceived - before).to.equal(28 + 2);
    client.destroy();
  });

  it('resets a natively connected client when its backend is fenced, before applyTable returns', async () => {
    const port = await freePort();
    harness = await startRouter({ version: 1, routes: [plain(port)] });
    const client = await connectTo(port);
    expect(await readLine(client)).to.equal('a');
    const closing = closed(client, 1000);
    const before = a.bytesReceived;
    const result = await harness.router.applyTable({
      version: 2,
      routes: [
        {
          ...harness.router.currentTable().routes[0]!,
          backends: [{ ...harness.router.currentTable().routes[0]!.backends[0]!, epoch: 2 }],
        },
      ],
    });
    expect(result.killed).to.equal(1);
    client.write('after the fence\n');
    await closing;
    await sleep(50);
    expect(a.bytesReceived).to.equal(before);
    expect(harness.router.routeStats()[0]).to.include({ killedFenced: 1, active: 0 });
  });
});
