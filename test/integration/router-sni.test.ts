import { expect } from 'chai';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { freePort } from '../helpers/free-port';
import { captureClientHello } from '../helpers/client-hello';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, eventually } from '../helpers/tcp-client';

describe('router SNI routing', function () {
  this.timeout(30_000);
  let a: TestServer;
  let b: TestServer;
  let harness: RouterHarness;
  let port: number;

  before(async () => {
    a = await startNamedServer('a');
    b = await startNamedServer('b');
    port = await freePort();
    harness = await startRouter({
      version: 1,
      routes: [
        { port, sni: ['orders.db.example.com'], backends: [{ id: 'a', host: '127.0.0.1', port: a.port }] },
        { port, sni: ['*.analytics.example.com'], backends: [{ id: 'b', host: '127.0.0.1', port: b.port }] },
      ],
    });
  });

  after(async () => {
    await harness?.stop();
    await a?.stop();
    await b?.stop();
  });

  /** Sends a real ClientHello for `name` and returns which backend answered and what it echoed. */
  async function helloTo(name: string | undefined): Promise<{ backend: string; echoed: Buffer; hello: Buffer }> {
    const hello = await captureClientHello(name);
    const client = await connectTo(port);
    let got: Buffer = Buffer.alloc(0);
    client.on('data', (c: Buffer) => (got = Buffer.concat([got, c])));
    client.write(hello);
    // The backend says its name (one line), then echoes what it received.
    await eventually(
      () => got.indexOf(10) >= 0 && got.length >= got.indexOf(10) + 1 + hello.length,
      3000,
      'name and echoed ClientHello',
    );
    client.destroy();
    const nl = got.indexOf(10);
    return { backend: got.subarray(0, nl).toString(), echoed: got.subarray(nl + 1), hello };
  }

  it('routes by exact server name and passes the ClientHello through untouched', async () => {
    const r = await helloTo('orders.db.example.com');
    expect(r.backend).to.equal('a');
    expect(r.echoed.equals(r.hello)).to.equal(true);
  });

  it('routes by wildcard server name', async () => {
    expect((await helloTo('eu.analytics.example.com')).backend).to.equal('b');
  });

  it('refuses an unknown server name when the port has no default route', async () => {
    const acceptedBefore = a.accepted + b.accepted;
    const hello = await captureClientHello('unknown.example.com');
    const client = await connectTo(port);
    client.write(hello);
    await closed(client, 3000);
    expect(a.accepted + b.accepted).to.equal(acceptedBefore);
    await eventually(
      () => harness.router.refusedUnknownServerName().some((r) => r.port === port && r.count >= 1),
      3000,
      'refusal counted',
    );
  });

  it('sends clients without a matching name to the default route of the port', async () => {
    await harness.reload({
      version: 2,
      routes: [
        ...harness.router.currentTable().routes,
        { port, backends: [{ id: 'default', host: '127.0.0.1', port: b.port }] },
      ],
    });
    expect((await helloTo('unknown.example.com')).backend).to.equal('b');
    expect((await helloTo('orders.db.example.com')).backend).to.equal('a');
  });
});
