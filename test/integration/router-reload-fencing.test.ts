import { expect } from 'chai';
import { createConnection, type Socket } from 'node:net';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { freePort } from '../helpers/free-port';
import {
  startBlackholeServer,
  startEchoServer,
  startNamedServer,
  startTcpServer,
  type TestServer,
} from '../helpers/tcp-servers';
import { closed, connectAndCollect, connectTo, eventually, readLine, sleep } from '../helpers/tcp-client';
import type { RouteInput } from '../../router';

/** Round trip through an echo-after-name backend: proves the connection still relays. */
async function roundTrip(socket: Socket, text: string): Promise<string> {
  socket.write(`${text}\n`);
  return readLine(socket);
}

describe('router reload and fencing', function () {
  this.timeout(30_000);
  let a: TestServer;
  let b: TestServer;
  let harness: RouterHarness;
  let port: number;

  const route = (over: Partial<RouteInput> = {}, backendOver: Record<string, object> = {}): RouteInput => ({
    port,
    mode: 'primary',
    backends: [
      { id: 'a', host: '127.0.0.1', port: a.port, role: 'primary', epoch: 1, ...backendOver.a },
      { id: 'b', host: '127.0.0.1', port: b.port, role: 'replica', epoch: 1, ...backendOver.b },
    ],
    ...over,
  });

  beforeEach(async () => {
    a = await startNamedServer('a');
    b = await startNamedServer('b');
    port = await freePort();
    harness = await startRouter({ version: 1, routes: [route()] });
  });

  afterEach(async () => {
    await harness.stop();
    await a.stop();
    await b.stop();
  });

  describe('reload', () => {
    it('keeps existing connections across a reload that changes other routes and opens a new port', async () => {
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('a');
      const newPort = await freePort();
      await harness.reload({
        version: 2,
        routes: [route(), { port: newPort, backends: [{ host: '127.0.0.1', port: b.port }] }],
      });
      expect(await roundTrip(client, 'still')).to.equal('still');
      const other = await connectTo(newPort);
      expect(await readLine(other)).to.equal('b');
      other.destroy();
      client.destroy();
    });

    it('picks up a changed file without a signal', async () => {
      const newPort = await freePort();
      harness.writeRoutes({
        version: 2,
        routes: [route(), { port: newPort, backends: [{ host: '127.0.0.1', port: b.port }] }],
      });
      await eventually(() => harness.router.currentTable().version === 2, 5000, 'file change applied');
      const other = await connectTo(newPort);
      expect(await readLine(other)).to.equal('b');
      other.destroy();
    });

    it('closes a port that left the table and drains its connections', async () => {
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('a');
      await harness.reload({ version: 2, routes: [route({ drainTimeoutMs: 500 })] });
      const keep = await freePort();
      await harness.reload({ version: 3, routes: [{ ...route(), port: keep }] });
      // The port is closed for new clients at once ...
      let refused = false;
      await connectTo(port).then(
        (s) => s.destroy(),
        () => (refused = true),
      );
      expect(refused).to.equal(true);
      // ... while the old connection drains for drainTimeoutMs before it is closed.
      expect(await roundTrip(client, 'draining')).to.equal('draining');
      const ms = await closed(client, 5000);
      expect(ms).to.be.within(100, 2000);
    });

    it('keeps the old table when the new file is invalid', async () => {
      await harness.reload({ version: 2, routes: [{ port: 'nope' as unknown as number, backends: [] }] });
      expect(harness.router.currentTable().version).to.equal(1);
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('a');
      client.destroy();
    });

    it('drains connections of a removed backend for drainTimeoutMs, then closes them', async () => {
      const rr = await freePort();
      await harness.reload({
        version: 2,
        routes: [
          route(),
          {
            port: rr,
            mode: 'round-robin',
            drainTimeoutMs: 300,
            backends: [
              { id: 'a', host: '127.0.0.1', port: a.port },
              { id: 'b', host: '127.0.0.1', port: b.port },
            ],
          },
        ],
      });
      const c1 = await connectTo(rr);
      const first = await readLine(c1);
      await harness.reload({
        version: 3,
        routes: [
          route(),
          {
            port: rr,
            mode: 'round-robin',
            drainTimeoutMs: 300,
            backends: [{ id: 'z', host: '127.0.0.1', port: first === 'a' ? b.port : a.port }],
          },
        ],
      });
      expect(await roundTrip(c1, 'drain')).to.equal('drain');
      const ms = await closed(c1, 5000);
      expect(ms).to.be.within(50, 2000);
      await eventually(
        () => harness.router.routeStats().find((s) => s.port === rr)!.killedDrained === 1,
        2000,
        'drain counted',
      );
    });
  });

  describe('fencing', () => {
    it('destroys connections to a backend whose state becomes fenced within 100 ms', async () => {
      const clients = await Promise.all([connectTo(port), connectTo(port), connectTo(port)]);
      for (const c of clients) expect(await readLine(c)).to.equal('a');
      const closings = clients.map((c) => closed(c, 1000));
      const t0 = performance.now();
      await harness.router.applyTable({
        ...harness.router.currentTable(),
        version: 2,
        routes: [
          {
            ...harness.router.currentTable().routes[0]!,
            backends: harness.router
              .currentTable()
              .routes[0]!.backends.map((x) => (x.id === 'a' ? { ...x, state: 'fenced' as const } : x)),
          },
        ],
      });
      await Promise.all(closings);
      expect(performance.now() - t0).to.be.lessThan(100);
      expect(harness.router.routeStats()[0]!.killedFenced).to.equal(3);
    });

    it('fences through the route file: an epoch bump destroys connections and the old primary gets no more bytes', async () => {
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('a');
      await eventually(() => a.bytesReceived === 0 && a.sockets.size === 1);
      const before = a.bytesReceived;
      const closing = closed(client, 3000);
      // b is promoted with epoch 2; a is demoted to replica.
      await harness.reload({
        version: 2,
        routes: [route({}, { a: { role: 'replica', epoch: 1 }, b: { role: 'primary', epoch: 2 } })],
      });
      await closing;
      // Whatever the client still tries to send must not reach the old primary.
      client.write('late write\n');
      await sleep(100);
      expect(a.bytesReceived).to.equal(before);
      const next = await connectTo(port);
      expect(await readLine(next)).to.equal('b');
      next.destroy();
    });

    it('refuses clients when the only primary is fenced (no failover to replicas)', async () => {
      await harness.reload({ version: 2, routes: [route({}, { a: { state: 'fenced' } })] });
      const { data } = await connectAndCollect(port);
      expect(data).to.equal('');
      expect(b.accepted).to.equal(0);
      expect(harness.router.routeStats()[0]!.refusedNoBackend).to.equal(1);
    });

    it('kills a connection whose backend epoch grows', async () => {
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('a');
      const closing = closed(client, 1000);
      await harness.router.applyTable({
        version: 2,
        routes: [
          {
            ...harness.router.currentTable().routes[0]!,
            backends: harness.router.currentTable().routes[0]!.backends.map((x) => ({ ...x, epoch: x.epoch + 1 })),
          },
        ],
      });
      await closing;
    });
  });

  describe('balancing', () => {
    it('spreads round-robin connections evenly', async () => {
      const c = await startNamedServer('c');
      try {
        const rr = await freePort();
        await harness.reload({
          version: 2,
          routes: [
            {
              port: rr,
              mode: 'round-robin',
              backends: [a, b, c].map((s, i) => ({ id: String(i), host: '127.0.0.1', port: s.port })),
            },
          ],
        });
        const names: string[] = [];
        for (let i = 0; i < 30; i++) {
          const s = await connectTo(rr);
          names.push(await readLine(s));
          s.destroy();
        }
        const counts = names.reduce<Record<string, number>>((m, n) => ((m[n] = (m[n] ?? 0) + 1), m), {});
        expect(counts).to.deep.equal({ a: 10, b: 10, c: 10 });
      } finally {
        await c.stop();
      }
    });

    it('sends new least-conn clients to the backend with fewer connections', async () => {
      const lc = await freePort();
      await harness.reload({
        version: 2,
        routes: [
          {
            port: lc,
            mode: 'least-conn',
            backends: [
              { id: 'a', host: '127.0.0.1', port: a.port },
              { id: 'b', host: '127.0.0.1', port: b.port },
            ],
          },
        ],
      });
      const held: Array<{ socket: Socket; name: string }> = [];
      for (let i = 0; i < 4; i++) {
        const socket = await connectTo(lc);
        held.push({ socket, name: await readLine(socket) });
      }
      expect(harness.router.activeByBackend(lc, 'a')).to.equal(2);
      expect(harness.router.activeByBackend(lc, 'b')).to.equal(2);
      // Close both connections on b: the next two clients must go to b.
      for (const h of held.filter((x) => x.name === 'b')) h.socket.destroy();
      await eventually(() => harness.router.activeByBackend(lc, 'b') === 0, 2000, 'b released');
      const next: Socket[] = [];
      const names: string[] = [];
      for (let i = 0; i < 2; i++) {
        const socket = await connectTo(lc);
        names.push(await readLine(socket));
        next.push(socket);
      }
      expect(names).to.deep.equal(['b', 'b']);
      for (const s of [...held.map((h) => h.socket), ...next]) s.destroy();
    });

    it('fails over to the next backend when a connect fails (round-robin)', async () => {
      const dead = await startTcpServer(() => undefined);
      const deadPort = dead.port;
      await dead.stop();
      const rr = await freePort();
      await harness.reload({
        version: 2,
        routes: [
          {
            port: rr,
            mode: 'round-robin',
            backends: [
              { id: 'dead', host: '127.0.0.1', port: deadPort },
              { id: 'a', host: '127.0.0.1', port: a.port },
            ],
          },
        ],
      });
      for (let i = 0; i < 4; i++) {
        const s = await connectTo(rr);
        expect(await readLine(s)).to.equal('a');
        s.destroy();
      }
      expect(harness.router.routeStats().find((s) => s.port === rr)!.connectErrors).to.be.greaterThan(0);
    });

    it('fails over to the next backend when a connect times out', async () => {
      const blackhole = await startBlackholeServer();
      try {
        const rr = await freePort();
        await harness.reload({
          version: 2,
          routes: [
            {
              port: rr,
              mode: 'round-robin',
              connectTimeoutMs: 200,
              backends: [
                { id: 'silent', host: '127.0.0.1', port: blackhole.port },
                { id: 'a', host: '127.0.0.1', port: a.port },
              ],
            },
          ],
        });
        for (let i = 0; i < 2; i++) {
          const s = await connectTo(rr);
          expect(await readLine(s, 3000)).to.equal('a');
          s.destroy();
        }
        expect(harness.router.routeStats().find((s) => s.port === rr)!.connectTimeouts).to.be.greaterThan(0);
      } finally {
        await blackhole.stop();
      }
    });

    it('gives what a client sent before any backend answered to the backend that takes it, whole and once, after a refused and a timed-out connect', async () => {
      const dead = await startTcpServer(() => undefined);
      const deadPort = dead.port;
      await dead.stop();
      const blackhole = await startBlackholeServer();
      const echo = await startEchoServer();
      try {
        const rr = await freePort();
        await harness.reload({
          version: 2,
          routes: [
            {
              port: rr,
              mode: 'round-robin',
              connectTimeoutMs: 200,
              backends: [
                { id: 'dead', host: '127.0.0.1', port: deadPort },
                { id: 'silent', host: '127.0.0.1', port: blackhole.port },
                { id: 'echo', host: '127.0.0.1', port: echo.port },
              ],
            },
          ],
        });
        // Each client sends its request and its FIN as it connects, so both are there when the
        // router accepts it, and reads the echo to its end: a lost or doubled byte shows.
        let sent = 0;
        for (let i = 0; i < 6; i++) {
          const text = `request ${i} ${'x'.repeat(i * 3000)}\n`;
          sent += text.length;
          const s = createConnection({ port: rr, host: '127.0.0.1', allowHalfOpen: true });
          s.on('error', () => undefined);
          s.end(text);
          let got = '';
          s.on('data', (c: Buffer) => (got += c.toString('latin1')));
          await closed(s, 5000);
          expect(got).to.equal(text);
        }
        expect(echo.bytesReceived).to.equal(sent);
        const stats = harness.router.routeStats().find((r) => r.port === rr)!;
        expect(stats.connectErrors).to.be.greaterThan(0);
        expect(stats.connectTimeouts).to.be.greaterThan(0);
      } finally {
        await echo.stop();
        await blackhole.stop();
      }
    });

    it('refuses in primary mode when the primary cannot be reached', async () => {
      const dead = await startTcpServer(() => undefined);
      const deadPort = dead.port;
      await dead.stop();
      await harness.reload({ version: 2, routes: [route({}, { a: { port: deadPort } })] });
      const { data } = await connectAndCollect(port);
      expect(data).to.equal('');
      expect(b.accepted).to.equal(0);
    });
  });
});
