import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { freePortBlock, releasePortBlock } from '../helpers/service-cluster';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, eventually, readLine } from '../helpers/tcp-client';
import { createNativeRelay } from '../../router/relay-native';
import type { RouteInput, RouteTableInput } from '../../router';

/**
 * A table change that opens many ports steers them to one listening socket of the relay through a
 * BPF sk_lookup program (docs/native-relay.md, "Opening many ports"). Each port must still behave
 * as a port with a listener of its own: its clients reach its own route, a port another program
 * holds is refused and reported, a steered port cannot be taken by another program, a removed port
 * refuses new clients while its connections drain, and fencing reaches connections made through it.
 */
describe('router: many ports through one listening socket', function () {
  this.timeout(60_000);
  const PORTS = 300; // above the default SF_NATIVE_STEER_MIN_PORTS (256)
  let a: TestServer;
  let b: TestServer;
  let base = 0;
  let harness: RouterHarness | undefined;
  let other: Server | undefined;

  before(function () {
    if (process.env.SF_RELAY === 'js' || createNativeRelay() === undefined) this.skip(); // native accept path only
    if (process.env.SF_NATIVE_STEER === 'off') this.skip(); // the operator turned it off
  });

  beforeEach(async () => {
    a = await startNamedServer('a');
    b = await startNamedServer('b');
    base = await freePortBlock(PORTS);
  });

  afterEach(async () => {
    await harness?.stop();
    harness = undefined;
    if (other) await new Promise((r) => other?.close(r));
    other = undefined;
    await a.stop();
    await b.stop();
    releasePortBlock(base);
  });

  /** Even ports go to backend a, odd ones to b. */
  const route = (port: number, over: Partial<RouteInput> = {}): RouteInput => {
    const named = (port - base) % 2 === 0 ? { id: 'a', port: a.port } : { id: 'b', port: b.port };
    return { port, backends: [{ ...named, host: '127.0.0.1', epoch: 1 }], ...over };
  };
  const table = (version: number, ports: number[], over: (port: number) => Partial<RouteInput> = () => ({})) =>
    ({ version, routes: ports.map((p) => route(p, over(p))) }) satisfies RouteTableInput;
  const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);

  /** Skips where the kernel or the process's capabilities refuse the program. */
  async function skipUnlessSteering(this: Mocha.Context, h: RouterHarness): Promise<void> {
    const steering = h.router.status().accept.steering;
    // Tried and refused (a reason): skipped. Not tried at all would be a failure of the premise.
    if (steering && !steering.available && steering.reason !== '') {
      console.log(`      (port steering unavailable here: ${steering.reason})`);
      this.skip();
    }
  }
  async function startSteered(this: Mocha.Context, t: RouteTableInput): Promise<RouterHarness> {
    const h = await startRouter(t);
    harness = h;
    await skipUnlessSteering.call(this, h);
    return h;
  }

  const listeningPorts = (): number[] =>
    execFileSync('ss', ['-Hltn', `( sport >= :${base} and sport < :${base + PORTS} )`], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => Number(/:(\d+)\s/.exec(l)?.[1]));

  it('opens every port of a big table without a listening socket per port, and sends each port its own route', async function () {
    harness = await startSteered.call(this, table(1, range(base, PORTS)));
    const status = harness.router.status();
    expect(status.accept.native).to.equal(PORTS);
    expect(status.accept.steering).to.include({ available: true });
    // One steering listener per set of accept options in the process: this table's plain one, and a
    // terminating one if an earlier test of this process steered TLS ports. Never one per port.
    expect(status.accept.steering?.listeners).to.be.within(1, 2);
    // A port whose number is still taken by an earlier connection's TIME_WAIT (a reserving bind
    // takes no SO_REUSEADDR) gets a listening socket of its own instead; all others are steered.
    const own = listeningPorts();
    expect(own.length, `ports with a listening socket of their own: ${own.join(' ')}`).to.be.below(PORTS / 10);
    expect(status.accept.steering?.ports).to.equal(PORTS - own.length);
    for (const port of [base, base + 1, base + 150, base + 223, base + PORTS - 1]) {
      const client = await connectTo(port);
      expect(await readLine(client), `port ${port}`).to.equal((port - base) % 2 === 0 ? 'a' : 'b');
      client.write('ping\n');
      expect(await readLine(client)).to.equal('ping');
      client.destroy();
    }
    const stats = harness.router.routeStats().find((s) => s.port === base + 150);
    expect(stats).to.include({ total: 1 });
  });

  it('refuses and reports a port another program listens on, and no other program can listen on a steered port', async function () {
    const held = base + 5;
    other = createServer((s) => s.end('other\n'));
    other.listen(held, '127.0.0.1');
    await once(other, 'listening');
    // A router refuses to start on a first table with a port in use; a later table leaves it out.
    harness = await startRouter(table(1, [base + PORTS - 1]));
    await harness.reload(table(2, range(base, PORTS)));
    await skipUnlessSteering.call(this, harness);
    const status = harness.router.status();
    expect(status.listenFailures.ports.map((f) => f.port)).to.deep.equal([held]);
    // Every other port is steered or listens on its own (the first table's port, any whose number
    // an earlier connection's TIME_WAIT still takes); `ss` also lists the other program's.
    const listening = listeningPorts();
    expect(listening).to.include(held);
    expect(status.accept.steering?.ports).to.equal(PORTS - listening.length);
    // The other program keeps its port and its clients.
    const toOther = await connectTo(held);
    expect(await readLine(toOther)).to.equal('other');
    toOther.destroy();
    // Node listens with SO_REUSEADDR, as most servers do: the port is still not to be had.
    const intruder = createServer();
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => {
      intruder.once('error', resolve);
      intruder.listen(base + 7, '127.0.0.1', () => resolve(new Error('listened') as NodeJS.ErrnoException));
    });
    intruder.close();
    expect(error.code).to.equal('EADDRINUSE');
    const client = await connectTo(base + 7);
    expect(await readLine(client)).to.equal('b');
    client.destroy();
  });

  it('refuses new clients of a removed port while its connection drains, and opens it again at once', async function () {
    const ports = range(base, PORTS);
    harness = await startSteered.call(this, table(1, ports));
    const own = listeningPorts();
    const gone = ports.find((p) => (p - base) % 2 === 0 && !own.includes(p)) ?? base;
    const steered = harness.router.status().accept.steering?.ports ?? 0;
    const staying = await connectTo(gone);
    expect(await readLine(staying)).to.equal('a');
    await harness.reload(
      table(
        2,
        ports.filter((p) => p !== gone),
      ),
    );
    expect(harness.router.status().accept.steering).to.include({ ports: steered - 1 });
    const refused = await connectTo(gone).then(
      (s) => {
        s.destroy();
        return 'connected';
      },
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(refused).to.equal('ECONNREFUSED');
    staying.write('still here\n');
    expect(await readLine(staying)).to.equal('still here');
    // Back in the next table while the old connection still holds the port's number: served by a
    // listening socket of its own (a steered port's bind would need the number free).
    await harness.reload(table(3, ports));
    expect(harness.router.status().listenFailures.count).to.equal(0);
    const again = await connectTo(gone);
    expect(await readLine(again)).to.equal('a');
    again.destroy();
    staying.destroy();
  });

  interface ChildReport {
    failed: number;
    accept: { native: number; steering?: { available: boolean; reason: string; ports: number } };
  }

  /**
   * A router in a process of its own (run through `prefix`, e.g. setpriv), with the whole table:
   * it reports the table's result and /health's `accept`, and closes on any message.
   */
  function spawnRouter(prefix: string[] = []): ReturnType<typeof spawn> {
    const router = join(__dirname, '../../router/router');
    const relay = join(__dirname, '../../router/relay-native');
    const protocol = join(__dirname, '../../protocol');
    const routes = range(base, PORTS)
      .map(
        (p) =>
          `{ port: ${p}, backends: [{ id: 'x', host: '127.0.0.1', port: ${(p - base) % 2 === 0 ? a.port : b.port} }] }`,
      )
      .join(',');
    const code = [
      `const { Router } = require(${JSON.stringify(router)});`,
      `const { createNativeRelay } = require(${JSON.stringify(relay)});`,
      `const { parseRouteTable } = require(${JSON.stringify(protocol)});`,
      'const r = new Router({ relay: createNativeRelay({ threads: 1 }) });',
      `r.applyTable(parseRouteTable({ version: 1, routes: [${routes}] }))`,
      '  .then((res) => process.send({ failed: res.failed.length, accept: r.status().accept }));',
      "process.on('message', () => void r.close().then(() => process.exit(0)));",
    ].join('\n');
    const [file, ...args] = [...prefix, process.execPath, '-e', code];
    return spawn(file!, args, { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  }

  it('leaves nothing behind when the router is killed: its ports are refused, then free for whoever listens next', async function () {
    const child = spawnRouter();
    try {
      const [report] = (await once(child, 'message')) as [ChildReport];
      if (report.accept.steering && !report.accept.steering.available) this.skip();
      expect(report.accept.steering).to.include({ ports: PORTS });
      const client = await connectTo(base + 3);
      expect(await readLine(client)).to.equal('b');
      child.kill('SIGKILL');
      await once(child, 'close');
      await closed(client);
      // No program still steering the port to a listener that is gone, no socket still holding it.
      const refused = await connectTo(base + 3).then(
        (s) => {
          s.destroy();
          return 'connected';
        },
        (e: NodeJS.ErrnoException) => e.code,
      );
      expect(refused).to.equal('ECONNREFUSED');
      other = createServer((s) => s.end('next\n'));
      other.listen(base + 3, '127.0.0.1');
      await once(other, 'listening');
      const next = await connectTo(base + 3);
      expect(await readLine(next)).to.equal('next');
      next.destroy();
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it('opens a big table with a listening socket per port where the router may not load the program, and says why', async function () {
    // Without CAP_BPF, CAP_SYS_ADMIN and CAP_NET_ADMIN, as an operator may run the router.
    const drop = ['-bpf', '-sys_admin', '-net_admin', '-perfmon'];
    try {
      execFileSync('setpriv', ['--bounding-set', drop.join(','), 'true']);
    } catch {
      this.skip(); // no setpriv, or these capabilities are not known here
    }
    const child = spawnRouter(['setpriv', '--bounding-set', drop.join(',')]);
    let logged = '';
    child.stdout?.on('data', (d: Buffer) => (logged += d.toString()));
    try {
      const [report] = (await once(child, 'message')) as [ChildReport];
      expect(report.failed).to.equal(0);
      expect(report.accept.native).to.equal(PORTS);
      expect(report.accept.steering).to.include({ available: false, ports: 0 });
      expect(report.accept.steering?.reason).to.match(/sk_lookup program|port map|listener map/);
      expect(report.accept.steering?.reason).to.match(/not permitted/i);
      expect(listeningPorts().length, 'every port listens on its own').to.equal(PORTS);
      for (const port of [base, base + 1, base + PORTS - 1]) {
        const client = await connectTo(port);
        expect(await readLine(client), `port ${port}`).to.equal((port - base) % 2 === 0 ? 'a' : 'b');
        client.destroy();
      }
      child.send('close');
      await once(child, 'close'); // exited, and its output read to the end
      // The operator hears of it once, with the reason, not only in /health.
      expect(logged.match(/port-steering program could not be set up/g)).to.have.length(1);
      expect(logged).to.include('Operation not permitted');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('resets a connection made through a steered port when its backend is fenced, before the table applies', async function () {
    const ports = range(base, PORTS);
    harness = await startSteered.call(this, table(1, ports));
    const own = listeningPorts();
    const port = ports.find((p) => p >= base + 20 && (p - base) % 2 === 0 && !own.includes(p)) ?? base + 20;
    const client = await connectTo(port);
    expect(await readLine(client)).to.equal('a');
    const before = a.bytesReceived;
    await harness.reload(
      table(2, ports, (p) =>
        p === port ? { backends: [{ id: 'a', host: '127.0.0.1', port: a.port, epoch: 1, state: 'fenced' }] } : {},
      ),
    );
    // Reset before reload() returned: the client sees its close, and the backend got nothing more.
    await closed(client);
    await eventually(() => harness?.router.routeStats().find((s) => s.port === port)?.active === 0);
    expect(harness.router.routeStats().find((s) => s.port === port)).to.include({ killedFenced: 1 });
    expect(a.bytesReceived).to.equal(before);
  });
});
