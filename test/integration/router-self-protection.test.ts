/**
 * A route whose backend is the router itself, and route-file paths that are not
 * regular files. Real routers (in this process and as `sf router`), real sockets, real FIFOs.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import {
  ErrorCode,
  FileRouteSource,
  Router,
  createRouterMetrics,
  selectRelay,
  type RouteTableInput,
  type RouterOptions,
  type SfError,
} from '../../router';
import { parseRouteTable } from '../../protocol/route-model';
import { freePort } from '../helpers/free-port';
import { runSf, waitForHealth } from '../helpers/sf-process';
import { startEchoServer, startTcpServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, eventually, readLine, sleep } from '../helpers/tcp-client';

interface LogLine {
  msg: string;
  [key: string]: unknown;
}

function capturingRouter(options: Partial<RouterOptions> = {}): { router: Router; logs: LogLine[] } {
  const logs: LogLine[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l) as LogLine) });
  return { router: new Router({ relay: selectRelay(), logger, ...options }), logs };
}

/** Echoes one line and resolves with it, or with undefined when the router closes the client. */
async function echoThrough(port: number): Promise<{ socket: Socket; line: string | undefined }> {
  const socket = await connectTo(port);
  socket.write('hello\n');
  const line = await Promise.race([
    readLine(socket, 3000).catch(() => undefined),
    closed(socket, 3000).then(() => undefined),
  ]);
  return { socket, line };
}

/**
 * Runs `sf` to its exit; one that does not exit within `timeoutMs` (a router that started
 * although it should have refused, or wedged on a FIFO) is killed and reported as 'running'.
 */
async function sfExit(args: string[], timeoutMs = 8000): Promise<{ code: number | null | 'running'; output: string }> {
  const p = runSf(args);
  const exited = new Promise<number | null>((resolve) => p.child.once('exit', (c) => resolve(c)));
  const code = await Promise.race([exited, sleep(timeoutMs).then(() => 'running' as const)]);
  if (code === 'running') await p.stop();
  return { code, output: p.output() };
}

describe('router self-protection', function () {
  this.timeout(60_000);
  let dir: string;
  let echo: TestServer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sf-router-self-'));
    echo = await startEchoServer();
  });

  after(async () => {
    await echo?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  let fileCount = 0;
  function routeFile(table: RouteTableInput): string {
    const file = join(dir, `routes-${++fileCount}.json`);
    writeFileSync(file, JSON.stringify(table));
    return file;
  }

  describe('a backend that is the router itself', () => {
    it('refuses a route file whose backend is one of its route ports, in every spelling of loopback', async () => {
      for (const host of ['127.0.0.1', 'localhost', '0.0.0.0', '::1', '::ffff:127.0.0.1']) {
        const [a, b] = [await freePort(), await freePort()];
        // The loop: route a to itself; and the indirect one, route b to route a's port.
        for (const routes of [
          [{ port: a, backends: [{ host, port: a }] }],
          [
            { port: a, backends: [{ host: '127.0.0.1', port: echo.port }] },
            { port: b, backends: [{ host, port: a }] },
          ],
        ]) {
          const { router } = capturingRouter();
          const err = (await router.start(new FileRouteSource(routeFile({ routes }), { watch: false })).then(
            () => undefined,
            (e: unknown) => e,
          )) as SfError | undefined;
          await router.close();
          expect(err, `${host} ${JSON.stringify(routes)}`).to.not.equal(undefined);
          expect(err!.code).to.equal(ErrorCode.InvalidRouteTable);
          expect(err!.field).to.equal(`routes[${routes.length - 1}].backends[0]`);
          expect(err!.message).to.contain("router's own listening address");
        }
      }
    });

    it('refuses a route file whose backend is its admin address', async () => {
      const admin = await freePort();
      const { router } = capturingRouter({ ownAddresses: [{ host: '127.0.0.1', port: admin }] });
      const file = routeFile({ routes: [{ port: await freePort(), backends: [{ host: 'localhost', port: admin }] }] });
      const err = (await router.start(new FileRouteSource(file, { watch: false })).catch((e: unknown) => e)) as SfError;
      await router.close();
      expect(err.code).to.equal(ErrorCode.InvalidRouteTable);
      expect(err.message).to.contain(`127.0.0.1:${admin}`);
    });

    it('keeps the old table when a reload brings a loop', async () => {
      const port = await freePort();
      const file = routeFile({ version: 1, routes: [{ port, backends: [{ host: '127.0.0.1', port: echo.port }] }] });
      const { router, logs } = capturingRouter();
      await router.start(new FileRouteSource(file, { watch: false }));
      try {
        writeFileSync(file, JSON.stringify({ version: 2, routes: [{ port, backends: [{ host: '::1', port }] }] }));
        await router.reload();
        expect(router.currentTable().version).to.equal(1);
        expect(logs.some((l) => String(l.msg).includes("router's own listening address"))).to.equal(true);
        const { socket, line } = await echoThrough(port);
        expect(line).to.equal('hello');
        socket.destroy();
      } finally {
        await router.close();
      }
    });

    it('refuses only the looping route of a pushed table, with a log line and a metric', async () => {
      const [good, bad] = [await freePort(), await freePort()];
      const { router, logs } = capturingRouter();
      try {
        const result = await router.applyTable(
          parseRouteTable({
            version: 4,
            routes: [
              { port: good, backends: [{ host: '127.0.0.1', port: echo.port }] },
              { port: bad, backends: [{ host: '127.0.0.1', port: good }] },
            ],
          }),
        );
        expect(result.refused.map((r) => r.port)).to.deep.equal([bad]);
        expect(result.opened).to.deep.equal([good]);
        expect(router.currentTable().routes.map((r) => r.port)).to.deep.equal([good]);
        const line = logs.find((l) => String(l.msg).startsWith('route refused'));
        expect(line).to.include({ port: bad, field: 'routes[1].backends[0]', code: ErrorCode.InvalidRouteTable });
        const metrics = await createRouterMetrics(router, false).metrics();
        expect(metrics).to.contain(`sf_router_routes_refused_total{port="${bad}",reason="self-loop"} 1`);
        // Nothing listens on the refused port; the good route serves.
        await connectTo(bad).then(
          (s) => {
            s.destroy();
            throw new Error('the refused route is listening');
          },
          (err: NodeJS.ErrnoException) => expect(err.code).to.equal('ECONNREFUSED'),
        );
        const { socket, line: echoed } = await echoThrough(good);
        expect(echoed).to.equal('hello');
        socket.destroy();
      } finally {
        await router.close();
      }
    });

    it('still fences the connections of a route refused in the same push', async () => {
      const port = await freePort();
      const { router } = capturingRouter();
      try {
        const backends = [{ id: 'echo', host: '127.0.0.1', port: echo.port }];
        await router.applyTable(parseRouteTable({ version: 1, routes: [{ port, backends }] }));
        const { socket, line } = await echoThrough(port);
        expect(line).to.equal('hello');
        const result = await router.applyTable(
          parseRouteTable({
            version: 2,
            routes: [
              {
                port,
                backends: [
                  { ...backends[0]!, state: 'fenced' },
                  { host: 'localhost', port },
                ],
              },
            ],
          }),
        );
        expect(result.refused).to.have.length(1);
        expect(result.killed).to.equal(1);
        await closed(socket, 1000);
      } finally {
        await router.close();
      }
    });

    it('never makes a connection into its own address at connect time', async () => {
      // Stands in for an address of the router learnt after the table was applied (an admin
      // port chosen by the kernel): if the router connected, this server would see it.
      const own = await startTcpServer(() => undefined);
      const port = await freePort();
      const { router, logs } = capturingRouter({ limitLogIntervalMs: 60_000 });
      try {
        await router.applyTable(
          parseRouteTable({
            routes: [
              {
                port,
                mode: 'round-robin',
                backends: [
                  { id: 'own', host: 'localhost', port: own.port },
                  { id: 'echo', host: '127.0.0.1', port: echo.port },
                ],
              },
            ],
          }),
        );
        router.addOwnAddress({ host: '0.0.0.0', port: own.port });
        for (let i = 0; i < 4; i++) {
          const { socket, line } = await echoThrough(port);
          expect(line).to.equal('hello');
          socket.destroy();
        }
        expect(own.accepted).to.equal(0);
        const stats = router.routeStats().find((s) => s.port === port)!;
        expect(stats.refusedSelfLoop).to.be.greaterThan(0);
        expect(stats.connectErrors).to.equal(0);
        const warned = logs.filter((l) => String(l.msg).includes('it is the router itself'));
        expect(warned).to.have.length(1);
        const metrics = await createRouterMetrics(router, false).metrics();
        expect(metrics).to.match(new RegExp(`sf_router_refused_self_loop_total\\{port="${port}",sni=""\\} [1-9]`));
      } finally {
        await router.close();
        await own.stop();
      }
    });

    it('exits 2 naming the backend when `sf router` is given a route to its admin port', async () => {
      const admin = await freePort();
      const file = routeFile({ routes: [{ port: await freePort(), backends: [{ host: '127.0.0.1', port: admin }] }] });
      const { code, output } = await sfExit(['router', '--routes', file, '--admin', `127.0.0.1:${admin}`]);
      expect(code).to.equal(2);
      expect(output).to.contain('routes[0].backends[0]');
      expect(output).to.contain("router's own listening address");
    });
  });

  describe('a route-file path that is not a regular file', () => {
    function fifo(name: string): string {
      const path = join(dir, name);
      execFileSync('mkfifo', [path]);
      return path;
    }

    it('refuses a FIFO at start at once, with a clear error and exit code 2', async () => {
      const path = fifo('start.fifo');
      const t0 = Date.now();
      const { code, output } = await sfExit(['router', '--routes', path, '--admin', '127.0.0.1:0']);
      expect(code).to.equal(2);
      expect(output).to.contain(`route file ${path} is a FIFO, not a regular file`);
      expect(Date.now() - t0).to.be.lessThan(10_000);
    });

    it('refuses a directory and a device', async () => {
      const sub = join(dir, 'a-directory');
      mkdirSync(sub);
      for (const [path, kind] of [
        [sub, 'a directory'],
        ['/dev/null', 'a device'],
      ] as const) {
        const { router } = capturingRouter();
        const err = (await router
          .start(new FileRouteSource(path, { watch: false }))
          .catch((e: unknown) => e)) as SfError;
        await router.close();
        expect(err.code).to.equal(ErrorCode.InvalidOption);
        expect(err.field).to.equal('file');
        expect(err.message).to.contain(`is ${kind}, not a regular file`);
      }
    });

    it('keeps its table when the file is replaced by a FIFO, and still stops at once on SIGTERM', async () => {
      const sub = join(dir, 'swap');
      mkdirSync(sub);
      const file = join(sub, 'routes.json');
      const port = await freePort();
      writeFileSync(
        file,
        JSON.stringify({ version: 3, routes: [{ port, backends: [{ host: '127.0.0.1', port: echo.port }] }] }),
      );
      const admin = await freePort();
      const router = runSf(['router', '--routes', file, '--admin', `127.0.0.1:${admin}`], {
        SF_RELAY: process.env.SF_RELAY ?? 'auto',
      });
      try {
        await waitForHealth(admin);
        rmSync(file);
        execFileSync('mkfifo', [file]);
        // The directory watcher sees the new name; SIGHUP asks again.
        router.child.kill('SIGHUP');
        await eventually(() => router.output().includes('is a FIFO, not a regular file'), 5000, 'FIFO refused');
        router.child.kill('SIGHUP');
        await sleep(200);
        const health = (await (await fetch(`http://127.0.0.1:${admin}/health`)).json()) as { tableVersion: number };
        expect(health.tableVersion).to.equal(3);
        const { socket, line } = await echoThrough(port);
        expect(line).to.equal('hello');
        socket.destroy();
        const t0 = Date.now();
        const exited = new Promise<number | null>((resolve) => router.child.once('exit', (c) => resolve(c)));
        router.child.kill('SIGTERM');
        const code = await Promise.race([exited, sleep(5000).then(() => 'wedged' as const)]);
        expect(code).to.not.equal('wedged');
        expect(Date.now() - t0).to.be.lessThan(5000);
      } finally {
        await router.stop();
      }
    });
  });
});
