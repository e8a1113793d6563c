import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { freePort } from '../helpers/free-port';
import { freePortBlock, releasePortBlock } from '../helpers/service-cluster';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, readLine, sleep } from '../helpers/tcp-client';
import { createNativeRelay } from '../../router/relay-native';
import type { RouteInput } from '../../router';
import { parseRouteTable } from '../../protocol';

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

  /** Listens with `server` on 127.0.0.1 and starts the router with one port routed to it. */
  const routeTo = async (server: Server): Promise<{ port: number; router: RouterHarness }> => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = await freePort();
    const backend = { id: 'c', host: '127.0.0.1', port: (server.address() as AddressInfo).port, epoch: 1 };
    harness = await startRouter({ version: 1, routes: [{ port, backends: [backend] }] });
    return { port, router: harness };
  };

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

  it('keeps counting a native port that left the table while its client drains, and forgets it once the client is gone', async () => {
    const [gone, stays] = [await freePort(), await freePort()];
    harness = await startRouter({ version: 1, routes: [plain(gone, { drainTimeoutMs: 10_000 }), plain(stays)] });
    const client = await connectTo(gone);
    expect(await readLine(client)).to.equal('a');
    const kept = harness.router.currentTable().routes[1]!;
    const result = await harness.router.applyTable({ version: 2, routes: [kept] });
    expect(result).to.include({ updated: 0, killed: 0 });
    expect(result.closed).to.deep.equal([gone]);
    expect(harness.router.status().accept.native).to.equal(1);
    // The draining client still relays, and its port's counters are still reported.
    client.write('still here\n');
    expect(await readLine(client)).to.equal('still here');
    expect(harness.router.routeStats().find((s) => s.port === gone)).to.include({ active: 1, total: 1 });
    // No new client is accepted on the port that left the table; the other port serves on.
    const refused = await connectTo(gone).then(
      (c) => {
        c.destroy();
        return false;
      },
      () => true,
    );
    expect(refused).to.equal(true);
    const other = await connectTo(stays);
    expect(await readLine(other)).to.equal('a');
    other.destroy();
    client.destroy();
    const deadline = Date.now() + 5_000;
    while (harness.router.routeStats().some((s) => s.port === gone) && Date.now() < deadline) await sleep(50);
    expect(harness.router.routeStats().map((s) => s.port)).to.deep.equal([stays]);
  });

  it("opens a new table's ports in one call and reports only the port another process holds", async () => {
    const taken = createServer();
    const held = await freePort();
    await new Promise<void>((resolve) => taken.listen(held, '127.0.0.1', resolve));
    try {
      const [p1, p2] = [await freePort(), await freePort()];
      harness = await startRouter({ version: 1, routes: [plain(p1)] });
      const result = await harness.router.applyTable(
        parseRouteTable({ version: 2, routes: [plain(p1), plain(held), plain(p2)] }),
      );
      expect(result.failed.map((f) => f.port)).to.deep.equal([held]);
      expect(result.failed[0]!.error.message).to.include('EADDRINUSE');
      expect(result.opened).to.deep.equal([p2]);
      expect(harness.router.status().accept.native).to.equal(2);
      for (const port of [p1, p2]) {
        const client = await connectTo(port);
        expect(await readLine(client)).to.equal('a');
        client.destroy();
      }
    } finally {
      taken.close();
    }
  });

  for (const [how, uring] of [
    ['in batches (io_uring where the kernel has it)', undefined],
    ['with plain system calls', 'off'],
  ] as const) {
    it(`opens a table of 40 new ports ${how}, each serving, and reports the one another process holds`, async () => {
      const taken = createServer();
      const held = await freePort();
      await new Promise<void>((resolve) => taken.listen(held, '127.0.0.1', resolve));
      const before = process.env.SF_NATIVE_URING;
      if (uring) process.env.SF_NATIVE_URING = uring;
      try {
        const ports: number[] = [];
        while (ports.length < 40) {
          const p = await freePort();
          if (p !== held && !ports.includes(p)) ports.push(p);
        }
        harness = await startRouter({ version: 1, routes: [plain(ports[0]!)] });
        const routes = [...ports.slice(0, 20), held, ...ports.slice(20)].map((p) => plain(p));
        const result = await harness.router.applyTable(parseRouteTable({ version: 2, routes }));
        expect(result.failed.map((f) => f.port)).to.deep.equal([held]);
        expect(result.failed[0]!.error.message).to.include('EADDRINUSE');
        expect([...result.opened].sort()).to.deep.equal(ports.slice(1).sort());
        expect(harness.router.status().accept.native).to.equal(40);
        for (const port of ports) {
          const client = await connectTo(port);
          expect(await readLine(client)).to.equal('a');
          client.destroy();
        }
        // A table that drops 39 of them closes their listeners in the same way (one batch).
        const kept = harness.router.currentTable().routes.find((r) => r.port === ports[0])!;
        const dropped = await harness.router.applyTable({ version: 3, routes: [kept] });
        expect([...dropped.closed].sort()).to.deep.equal(ports.slice(1).sort());
        expect(harness.router.status().accept.native).to.equal(1);
        // Each dropped port is free again at once: its listening socket is closed, not just unwatched.
        for (const port of ports.slice(1)) {
          const again = createServer();
          await new Promise<void>((resolve, reject) => {
            again.once('error', reject);
            again.listen(port, '127.0.0.1', resolve);
          });
          await new Promise((resolve) => again.close(resolve));
        }
      } finally {
        if (before === undefined) delete process.env.SF_NATIVE_URING;
        else process.env.SF_NATIVE_URING = before;
        taken.close();
      }
    });
  }

  for (const [how, uring] of [
    ['in batches', undefined],
    ['with plain system calls', 'off'],
  ] as const) {
    it(`opens 600 new ports in one share per relay thread ${how}, each serving, and reports the one another process holds`, async function () {
      // A child process to start and 600 ports to open, connect and close: slow on a loaded machine.
      this.timeout(90_000);
      // 300 ports per share: a table this big opens on both relay threads of the child at once.
      const base = await freePortBlock(600);
      const held = base + 450;
      const taken = createServer();
      await new Promise<void>((resolve) => taken.listen(held, '127.0.0.1', resolve));
      const router = join(__dirname, '../../router/router');
      const relay = join(__dirname, '../../router/relay-native');
      const protocol = join(__dirname, '../../protocol');
      const code = [
        `const { Router } = require(${JSON.stringify(router)});`,
        `const { createNativeRelay } = require(${JSON.stringify(relay)});`,
        `const { parseRouteTable } = require(${JSON.stringify(protocol)});`,
        'const r = new Router({ relay: createNativeRelay({ threads: 2 }) });',
        `const routes = Array.from({ length: 600 }, (_, i) => ({ port: ${base} + i, backends: [{ id: 'a', host: '127.0.0.1', port: ${a.port}, epoch: 1 }] }));`,
        'r.applyTable(parseRouteTable({ version: 1, routes })).then((res) => process.send({',
        '  failed: res.failed.map((f) => [f.port, f.error.message]), opened: res.opened.length, native: r.status().accept.native }));',
        "process.on('message', (m) => { if (m === 'close') void r.close().then(() => process.exit(0)); });",
      ].join('\n');
      const env = { ...process.env };
      if (uring) env.SF_NATIVE_URING = uring;
      const child = spawn(process.execPath, ['-e', code], { env, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      try {
        const [opened] = (await once(child, 'message')) as [
          { failed: Array<[number, string]>; opened: number; native: number },
        ];
        expect(opened.failed.map(([port]) => port)).to.deep.equal([held]);
        expect(opened.failed[0]![1]).to.include('EADDRINUSE');
        expect(opened.opened).to.equal(599);
        expect(opened.native).to.equal(599);
        // Every port of both shares serves (50 clients at a time).
        const ports = Array.from({ length: 600 }, (_, i) => base + i).filter((p) => p !== held);
        for (let i = 0; i < ports.length; i += 50) {
          await Promise.all(
            ports.slice(i, i + 50).map(async (port) => {
              const client = await connectTo(port);
              expect(await readLine(client)).to.equal('a');
              client.destroy();
            }),
          );
        }
        child.send('close');
        await once(child, 'exit');
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
        taken.close();
        releasePortBlock(base);
      }
    });
  }

  it('spreads the clients of one port evenly over two relay threads, and fences them all before applyTable returns', async function () {
    // A child process to start and 40 clients one after another: slow on a loaded machine.
    this.timeout(60_000);
    const port = await freePort();
    const router = join(__dirname, '../../router/router');
    const relay = join(__dirname, '../../router/relay-native');
    const protocol = join(__dirname, '../../protocol');
    // A process of its own: the relay threads are fixed by the first relay of a process, and this
    // one needs two (the test process may run with one). One thread watches the port's listener
    // and hands clients to the other.
    const route = (epoch: number): string =>
      `{ port: ${port}, backends: [{ id: 'a', host: '127.0.0.1', port: ${a.port}, epoch: ${epoch} }] }`;
    const code = [
      `const { Router } = require(${JSON.stringify(router)});`,
      `const { createNativeRelay, nativeRelayStats } = require(${JSON.stringify(relay)});`,
      `const { parseRouteTable } = require(${JSON.stringify(protocol)});`,
      'const r = new Router({ relay: createNativeRelay({ threads: 2 }) });',
      `r.applyTable(parseRouteTable({ version: 1, routes: [${route(1)}] }))`,
      '  .then(() => process.send({ native: r.status().accept.native, threads: nativeRelayStats().threads }));',
      "process.on('message', (m) => {",
      "  if (m === 'stats') process.send({ accepted: nativeRelayStats().accepted });",
      `  if (m === 'fence') r.applyTable(parseRouteTable({ version: 2, routes: [${route(2)}] }))`,
      '    .then((res) => process.send({ killed: res.killed, accepted: nativeRelayStats().accepted }));',
      "  if (m === 'close') void r.close().then(() => process.exit(0));",
      '});',
    ].join('\n');
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const next = async (): Promise<Record<string, unknown>> => ((await once(child, 'message')) as [never])[0];
    const clients: Array<Awaited<ReturnType<typeof connectTo>>> = [];
    try {
      expect(await next()).to.deep.equal({ native: 1, threads: 2 });
      // One after another, each relaying before the next connects: the accepting thread gives
      // each client to the thread holding fewer, so 40 clients end 20 and 20.
      for (let i = 0; i < 40; i++) {
        const client = await connectTo(port);
        expect(await readLine(client)).to.equal('a');
        clients.push(client);
      }
      child.send('stats');
      expect(await next()).to.deep.equal({ accepted: [20, 20] });
      const closing = clients.map((c) => closed(c, 5000));
      const before = a.bytesReceived;
      child.send('fence');
      // Every client of both threads was reset before applyTable returned.
      expect(await next()).to.deep.equal({ killed: 40, accepted: [0, 0] });
      for (const c of clients) c.write('after the fence\n');
      await Promise.all(closing);
      await sleep(50);
      expect(a.bytesReceived).to.equal(before);
      child.send('close');
      await once(child, 'exit');
    } finally {
      for (const c of clients) c.destroy();
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('relays between peers on 127.0.0.1 with a congestion control that does not pace, or the one SF_NATIVE_LOOPBACK_CC names', async function () {
    // Three child processes (the choice is made once per process): slow on a loaded machine.
    this.timeout(90_000);
    const system = readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim();
    const allowed = readFileSync('/proc/sys/net/ipv4/tcp_allowed_congestion_control', 'utf8').trim().split(/\s+/);
    // Without CAP_NET_ADMIN only the allowed algorithms can be set; reno always is.
    const unpaced = process.getuid?.() === 0 || allowed.includes('cubic') ? 'cubic' : 'reno';
    const byDefault = system === 'cubic' || system === 'reno' ? system : unpaced;
    const router = join(__dirname, '../../router/router');
    const relay = join(__dirname, '../../router/relay-native');
    const protocol = join(__dirname, '../../protocol');
    for (const [setting, expected] of [
      [undefined, byDefault],
      ['reno', 'reno'],
      ['system', system],
    ] as const) {
      const port = await freePort();
      const code = [
        `const { Router } = require(${JSON.stringify(router)});`,
        `const { createNativeRelay } = require(${JSON.stringify(relay)});`,
        `const { parseRouteTable } = require(${JSON.stringify(protocol)});`,
        'const r = new Router({ relay: createNativeRelay() });',
        `r.applyTable(parseRouteTable({ version: 1, routes: [{ port: ${port}, backends: [{ id: 'a', host: '127.0.0.1', port: ${a.port}, epoch: 1 }] }] }))`,
        "  .then(() => process.send('ready'));",
        "process.on('message', (m) => { if (m === 'close') void r.close().then(() => process.exit(0)); });",
      ].join('\n');
      const env = { ...process.env };
      delete env.SF_NATIVE_LOOPBACK_CC;
      if (setting !== undefined) env.SF_NATIVE_LOOPBACK_CC = setting;
      const child = spawn(process.execPath, ['-e', code], { env, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      try {
        await once(child, 'message');
        // The first client sets the listener's algorithm, the second inherits it from there.
        const clients = [await connectTo(port)];
        expect(await readLine(clients[0]!)).to.equal('a');
        clients.push(await connectTo(port));
        expect(await readLine(clients[1]!)).to.equal('a');
        // What ss reports for the router's connections to the backend and for its two clients.
        const algorithms = (filter: string[]): string[] =>
          execFileSync('ss', ['-tinH', ...filter], { encoding: 'utf8' })
            .split('\n')
            .filter((line) => /^\s/.test(line))
            .map((line) => line.trim().split(/\s+/)[0]!);
        const how = `SF_NATIVE_LOOPBACK_CC=${setting ?? '(unset)'}`;
        expect(algorithms(['dst', `127.0.0.1:${a.port}`]), how).to.deep.equal([expected, expected]);
        expect(algorithms(['src', `127.0.0.1:${port}`]), how).to.deep.equal([expected, expected]);
        for (const c of clients) c.destroy();
        child.send('close');
        await once(child, 'exit');
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    }
  });

  it('relays what clients sent before they were accepted, and their end, to a backend on this host', async () => {
    // The pass that accepts a client relays its first bytes at once when its loopback backend is
    // already connected; the end that came with them follows after the registration's edge.
    const counter = createServer({ allowHalfOpen: true }, (socket) => {
      let bytes = 0;
      socket.on('data', (chunk: Buffer) => (bytes += chunk.length));
      socket.on('end', () => socket.end(`${bytes}\n`));
    });
    try {
      const { port, router } = await routeTo(counter);
      const cycle = (size: number): Promise<string> =>
        new Promise((resolve, reject) => {
          const client = createConnection({ port, host: '127.0.0.1', allowHalfOpen: true });
          let reply = '';
          client.on('error', reject);
          client.on('data', (chunk: Buffer) => (reply += chunk.toString()));
          client.on('end', () => {
            client.destroy();
            resolve(reply);
          });
          // Written before the connect completes: in the client's queue when the router accepts.
          client.end(Buffer.alloc(size, 0x61));
        });
      for (let round = 0; round < 5; round++) {
        const sizes = Array.from({ length: 40 }, (_, i) => [1, 100, 16 * 1024, 200 * 1024][i % 4]!);
        expect(await Promise.all(sizes.map(cycle))).to.deep.equal(sizes.map((n) => `${n}\n`));
      }
      expect(router.router.routeStats()[0]).to.include({ total: 200, connectErrors: 0 });
    } finally {
      counter.close();
    }
  });

  it("delivers a backend's last bytes and its close, whatever their size, with the end after every byte", async () => {
    // Bytes read together with the backend's FIN are sent with MSG_MORE and leave with the FIN the
    // loop passes on next: none may wait behind it for longer, or be lost.
    const sizes = [1, 7, 1500, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 300 * 1024];
    const closer = createServer((socket) => {
      socket.once('data', (chunk: Buffer) => socket.end(Buffer.alloc(Number(chunk.toString().trim()), 0x62)));
    });
    try {
      const { port } = await routeTo(closer);
      const cycle = (size: number): Promise<number> =>
        new Promise((resolve, reject) => {
          const client = createConnection({ port, host: '127.0.0.1' });
          let received = 0;
          client.on('error', reject);
          client.on('data', (chunk: Buffer) => (received += chunk.length));
          client.on('end', () => resolve(received));
          client.write(`${size}\n`);
        });
      for (let round = 0; round < 10; round++) {
        const started = Date.now();
        expect(await Promise.all(sizes.map(cycle))).to.deep.equal(sizes);
        // A held segment would wait for a timer (200 ms or more) or forever.
        expect(Date.now() - started).to.be.below(2000);
      }
    } finally {
      closer.close();
    }
  });

  it('keeps a process whose only ports are native alive, and lets it exit once the router closes', async () => {
    const port = await freePort();
    const router = join(__dirname, '../../router/router');
    const relay = join(__dirname, '../../router/relay-native');
    const protocol = join(__dirname, '../../protocol');
    // The child has no other handle: its IPC channel is unreferenced, so only the router's ports
    // can hold it up.
    const code = [
      `const { Router } = require(${JSON.stringify(router)});`,
      `const { createNativeRelay } = require(${JSON.stringify(relay)});`,
      `const { parseRouteTable } = require(${JSON.stringify(protocol)});`,
      'const r = new Router({ relay: createNativeRelay() });',
      `r.applyTable(parseRouteTable({ version: 1, routes: [{ port: ${port}, backends: [{ id: 'a', host: '127.0.0.1', port: ${a.port} }] }] }))`,
      "  .then((res) => { process.send(res.opened.length === 1 && r.status().accept.native === 1 ? 'ready' : 'not native'); process.channel.unref(); });",
      "process.on('message', () => { void r.close(); });",
    ].join('\n');
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const exited = once(child, 'exit');
    try {
      const [first] = (await once(child, 'message')) as [string];
      expect(first).to.equal('ready');
      const client = await connectTo(port);
      expect(await readLine(client)).to.equal('a');
      client.destroy();
      // Without a reference held for the native port the child would have exited by now.
      await sleep(500);
      expect(child.exitCode).to.equal(null);
      child.send('close');
      const [exitCode] = (await exited) as [number];
      expect(exitCode).to.equal(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
