import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { expect } from 'chai';
import { listenBacklogCeiling } from '../../common/listen-backlog';
import { loadNativeBindings } from '../../native-bindings';
import { FDS_PER_CONNECTION } from '../../router/connection-budget';
import { descriptorTableSize } from '../../router/descriptor-table';
import { freePort } from '../helpers/free-port';
import {
  ROUTER_ADMIN_TOKEN,
  routerAdminJson,
  routerAdminText,
  runSf,
  runSfToExit,
  waitForHealth,
  type SfProcess,
} from '../helpers/sf-process';
import { startTcpServer, type TestServer } from '../helpers/tcp-servers';
import { connectTo, eventually, readLine, sleep } from '../helpers/tcp-client';

describe('sf router', function () {
  this.timeout(60_000);
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sf-router-cli-'));
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  describe('route file validation', () => {
    const cases: Array<[string, string, string]> = [
      ['not JSON', '{"routes": [', 'route file is not valid JSON'],
      [
        'a bad backend port',
        '{"routes":[{"port":16001,"backends":[{"host":"127.0.0.1","port":0}]}]}',
        'routes[0].backends[0].port must be an integer 1-65535',
      ],
      ['a missing host', '{"routes":[{"port":16001,"backends":[{"port":5}]}]}', 'routes[0].backends[0].host'],
      ['a bad mode', '{"routes":[{"port":16001,"mode":"fastest","backends":[]}]}', 'routes[0].mode'],
      ['a duplicate port', '{"routes":[{"port":16001,"backends":[]},{"port":16001,"backends":[]}]}', 'routes[1].port'],
    ];
    for (const [what, text, message] of cases) {
      it(`refuses to start with ${what}, exit code 2 and the field named`, async () => {
        const file = join(dir, 'bad.json');
        writeFileSync(file, text);
        const { code, output } = await runSfToExit(['router', '--routes', file, '--admin', '127.0.0.1:0']);
        expect(code).to.equal(2);
        expect(output).to.contain(message);
      });
    }

    it('exits 2 on a usage error', async () => {
      const { code, output } = await runSfToExit(['router', '--admin', 'nonsense']);
      expect(code).to.equal(2);
      expect(output).to.contain('--admin must be HOST:PORT');
    });
  });

  describe('running', () => {
    let backend: TestServer;
    let router: SfProcess;
    let adminPort: number;
    let routePort: number;
    let file: string;
    let sink: { paused: boolean };

    before(async () => {
      sink = { paused: false };
      // A backend that pours data as fast as the router takes it, and says its name first.
      backend = await startTcpServer((s) => {
        s.write('pour\n');
        const chunk = Buffer.alloc(256 * 1024, 7);
        const pour = (): void => {
          while (!s.destroyed && s.write(chunk));
          if (!s.destroyed) s.once('drain', pour);
        };
        s.once('data', pour);
      });
      adminPort = await freePort();
      routePort = await freePort();
      file = join(dir, 'routes.json');
      writeFileSync(
        file,
        JSON.stringify({
          version: 3,
          routes: [{ port: routePort, backends: [{ id: 'pour', host: '127.0.0.1', port: backend.port }] }],
        }),
      );
      router = runSf(['router', '--routes', file, '--admin', `127.0.0.1:${adminPort}`], {
        SF_RELAY: process.env.SF_RELAY ?? 'auto',
        SF_API_TOKEN: ROUTER_ADMIN_TOKEN,
      });
      await waitForHealth(adminPort);
    });

    after(async () => {
      await router?.stop();
      await backend?.stop();
    });

    it('serves /health, /routes and /metrics', async () => {
      const health = (await (await fetch(`http://127.0.0.1:${adminPort}/health`)).json()) as Record<string, unknown>;
      expect(health).to.include({ status: 'ok', tableVersion: 3, routes: 1 });
      expect(['js', 'native']).to.include(health.relay);
      const routes = (await routerAdminJson(adminPort, '/routes')) as {
        version: number;
        routes: Array<{ port: number }>;
      };
      expect(routes.version).to.equal(3);
      expect(routes.routes[0]!.port).to.equal(routePort);
      const metrics = await routerAdminText(adminPort, '/metrics');
      expect(metrics).to.contain('sf_router_table_version 3');
      expect(metrics).to.match(/sf_router_active_connections\{port="\d+",sni=""\} \d+/);
      const missing = await fetch(`http://127.0.0.1:${adminPort}/nope`);
      expect(missing.status).to.equal(404);
    });

    it('answers /routes and /metrics only with its token, /health without one', async () => {
      for (const path of ['/routes', '/metrics'])
        for (const authorization of [
          undefined,
          'Bearer wrong-token',
          ROUTER_ADMIN_TOKEN,
          `Basic ${ROUTER_ADMIN_TOKEN}`,
        ]) {
          const res = await fetch(`http://127.0.0.1:${adminPort}${path}`, {
            ...(authorization ? { headers: { authorization } } : {}),
          });
          const body = (await res.json()) as { error: { code: string; field: string } };
          expect(res.status, `${path} with ${authorization ?? 'no authorization'}`).to.equal(401);
          expect(res.headers.get('www-authenticate')).to.match(/^Bearer/);
          expect(body.error).to.include({ code: 'SF_ERR_UNAUTHORIZED', field: 'authorization' });
          expect(JSON.stringify(body)).to.not.contain(String(routePort));
        }
      expect((await fetch(`http://127.0.0.1:${adminPort}/health`)).status).to.equal(200);
    });

    it('refuses a second router on its admin port instead of sharing it', async () => {
      // uWS binds with SO_REUSEPORT: without the claim, both routers would answer on the port.
      const empty = join(dir, 'no-routes.json');
      writeFileSync(empty, JSON.stringify({ version: 1, routes: [] }));
      const { code, output } = await runSfToExit(['router', '--routes', empty, '--admin', `127.0.0.1:${adminPort}`]);
      // The port named by --admin is taken: the operator's to change, so a usage error.
      expect(code, output).to.equal(2);
      expect(output).to.match(/admin endpoint cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
      const health = await fetch(`http://127.0.0.1:${adminPort}/health`);
      expect(health.status).to.equal(200);
    });

    it('keeps its memory bounded while a paused client faces a fast backend', async () => {
      const client = await connectTo(routePort);
      expect(await readLine(client)).to.equal('pour');
      client.write('go');
      client.pause();
      sink.paused = true;
      const before = await router.rss();
      // The backend would send gigabytes in this time; the router must stop reading from it.
      await sleep(2000);
      const after = await router.rss();
      const metrics = await routerAdminText(adminPort, '/metrics');
      const bytesOut = Number(
        new RegExp(`sf_router_bytes_out_total\\{port="${routePort}",sni=""\\} (\\d+)`).exec(metrics)?.[1] ?? NaN,
      );
      expect(after - before).to.be.lessThan(64 * 1024 * 1024);
      // Socket buffers on both sides hold a few MB at most: nothing like an unbounded queue.
      expect(bytesOut).to.be.lessThan(64 * 1024 * 1024);
      client.destroy();
    });

    it('reloads on SIGHUP', async () => {
      const newPort = await freePort();
      writeFileSync(
        file,
        JSON.stringify({
          version: 9,
          routes: [
            { port: routePort, backends: [{ id: 'pour', host: '127.0.0.1', port: backend.port }] },
            { port: newPort, backends: [{ host: '127.0.0.1', port: backend.port }] },
          ],
        }),
      );
      router.child.kill('SIGHUP');
      await eventually(
        async () =>
          ((await (await fetch(`http://127.0.0.1:${adminPort}/health`)).json()) as { tableVersion: number })
            .tableVersion === 9,
        5000,
        'SIGHUP reload',
      );
      const s = await connectTo(newPort);
      expect(await readLine(s)).to.equal('pour');
      s.destroy();
    });

    it('keeps serving the old table after an invalid file is written', async () => {
      writeFileSync(file, '{"routes": [{"port": -1}]}');
      router.child.kill('SIGHUP');
      await sleep(300);
      const health = (await (await fetch(`http://127.0.0.1:${adminPort}/health`)).json()) as { tableVersion: number };
      expect(health.tableVersion).to.equal(9);
      expect(router.output()).to.contain('routes[0].port');
      const s = await connectTo(routePort);
      expect(await readLine(s)).to.equal('pour');
      s.destroy();
    });
  });

  describe('listen backlog (a reconnect storm)', () => {
    const somaxconn = listenBacklogCeiling();
    // More than Node's 511, fewer than this process's descriptors.
    const storm = 600;
    let backend: TestServer;

    before(async function () {
      if (somaxconn === undefined || somaxconn < storm + 64) this.skip();
      backend = await startTcpServer((s) => s.on('data', () => s.write('pong\n')));
    });

    after(async () => backend?.stop());

    /** Starts a router with one route to the backend, extra flags appended. */
    async function startRouterWith(
      flags: string[],
      env: NodeJS.ProcessEnv = {},
    ): Promise<{ router: SfProcess; routePort: number; adminPort: number }> {
      const adminPort = await freePort();
      const routePort = await freePort();
      const file = join(dir, `backlog-${routePort}.json`);
      writeFileSync(
        file,
        JSON.stringify({
          version: 1,
          routes: [{ port: routePort, backends: [{ host: '127.0.0.1', port: backend.port }] }],
        }),
      );
      const router = runSf(['router', '--routes', file, '--admin', `127.0.0.1:${adminPort}`, ...flags], {
        SF_RELAY: process.env.SF_RELAY ?? 'auto',
        SF_API_TOKEN: ROUTER_ADMIN_TOKEN,
        ...env,
      });
      await waitForHealth(adminPort);
      return { router, routePort, adminPort };
    }

    /** The scheduler state (R, S, T, ...) of every thread of a process, from /proc. */
    function threadStates(pid: number): string[] {
      return readdirSync(`/proc/${pid}/task`).map((tid) => {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      });
    }

    /** The queue size (`ss`'s Send-Q) of each socket listening on `port`. */
    function listenQueueSizes(port: number): number[] {
      const out = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' });
      return out
        .trim()
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => Number(line.trim().split(/\s+/)[2]));
    }

    /**
     * Connects `count` clients while the router is stopped (SIGSTOP): the kernel completes the
     * handshake of every client its queue holds and drops the SYNs of the rest, which then wait
     * for a retransmit and are dropped again while the queue stays full. Returns how many had
     * connected after `waitMs`, when the router is let go on, and checks that every client is
     * then served.
     */
    async function connectWhileStopped(
      router: SfProcess,
      routePort: number,
      count: number,
      waitMs: number,
    ): Promise<number> {
      const sockets: Socket[] = [];
      let connected = 0;
      router.child.kill('SIGSTOP');
      try {
        // kill() returns before the signal is taken: a router still running would accept some.
        await eventually(
          async () => threadStates(router.child.pid!).every((state) => state === 'T'),
          5000,
          'router stopped',
        );
        const connects = Array.from({ length: count }, () => {
          const socket = createConnection({ host: '127.0.0.1', port: routePort });
          sockets.push(socket);
          return new Promise<void>((resolve, reject) => {
            socket.once('connect', () => {
              connected++;
              resolve();
            });
            socket.once('error', reject);
          });
        });
        await sleep(waitMs);
        const connectedWhileStopped = connected;
        router.child.kill('SIGCONT');
        await Promise.all(connects);
        const replies = sockets.map(async (socket) => {
          socket.write('ping\n');
          expect(await readLine(socket, 15_000)).to.equal('pong');
        });
        await Promise.all(replies);
        return connectedWhileStopped;
      } finally {
        router.child.kill('SIGCONT');
        for (const socket of sockets) socket.destroy();
      }
    }

    it('queues a burst of clients up to net.core.somaxconn by default, and /health says so', async () => {
      const { router, routePort, adminPort } = await startRouterWith([]);
      try {
        const health = (await (await fetch(`http://127.0.0.1:${adminPort}/health`)).json()) as {
          accept: { backlog: { requested: number; effective: number; ceiling: number } };
        };
        expect(health.accept.backlog).to.deep.equal({ requested: somaxconn, effective: somaxconn, ceiling: somaxconn });
        // Every one of the burst is in the kernel's queue at once: none waits for a SYN retransmit.
        expect(await connectWhileStopped(router, routePort, storm, 500)).to.equal(storm);
      } finally {
        await router.stop();
      }
    });

    /** The slots of process `pid`'s descriptor table. */
    const tableOf = (pid: number): number | undefined => descriptorTableSize(`/proc/${pid}/status`);

    it('sizes its descriptor table for its connection limit at start, so a storm never waits for it to grow', async function () {
      if (loadNativeBindings()?.reserveDescriptors === undefined) this.skip();
      const { router, routePort, adminPort } = await startRouterWith([]);
      let reserved: number | undefined;
      try {
        const health = (await (await fetch(`http://127.0.0.1:${adminPort}/health`)).json()) as {
          connectionLimit: number;
          fdLimit: number;
          fdTable: number;
        };
        const pid = router.child.pid!;
        // Every descriptor the limit allows fits already (the table cannot exceed RLIMIT_NOFILE).
        expect(health.fdTable).to.equal(tableOf(pid));
        expect(health.fdTable).to.be.at.least(Math.min(health.fdLimit, FDS_PER_CONNECTION * health.connectionLimit));
        // Both figures an operator compares before a restart, as metrics too.
        const metrics = await routerAdminText(adminPort, '/metrics');
        expect(metrics).to.contain(`sf_router_fd_table ${health.fdTable}\n`);
        expect(metrics).to.contain(`sf_router_listen_backlog ${somaxconn}\n`);
        // A storm leaves it as it was: the kernel had nothing to grow while the clients came.
        expect(await connectWhileStopped(router, routePort, storm, 500)).to.equal(storm);
        expect(tableOf(pid)).to.equal(health.fdTable);
        reserved = health.fdTable;
      } finally {
        await router.stop();
      }
      // Turned off, the table is what the process started with (sized by its parent's highest open
      // descriptor, a few thousand slots under a test runner) and grows with the clients.
      const off = await startRouterWith([], { SF_ROUTER_FD_RESERVE: 'off' });
      try {
        expect(tableOf(off.router.child.pid!)).to.be.below(reserved ?? 0);
      } finally {
        await off.router.stop();
      }
    });

    it('holds --backlog N clients when asked for fewer; the rest wait for a retransmit and are still served', async () => {
      const { router, routePort } = await startRouterWith(['--backlog', '64']);
      try {
        const whileStopped = await connectWhileStopped(router, routePort, 200, 500);
        // listen(2) holds backlog + 1 established clients.
        expect(whileStopped).to.be.within(1, 65);
      } finally {
        await router.stop();
      }
    });

    /** The Prometheus expression docs/router.md gives for ports holding more clients than their queue. */
    function documentedQueueExpression(): string {
      const doc = readFileSync(join(__dirname, '..', '..', '..', 'docs', 'router.md'), 'utf8');
      const m = /`(sum by \(instance, port\) \(sf_router_active_connections\)[^`]*)`/.exec(doc);
      if (!m) throw new Error('docs/router.md no longer gives the listen-queue expression');
      return m[1]!;
    }

    /**
     * Evaluates `expr` as an alert with promtool over the samples of one real scrape (labelled
     * instance="router") and returns whether promtool agrees that exactly `firing` ports alert.
     */
    function promtoolAgrees(expr: string, scrape: string, firing: number[]): { ok: boolean; output: string } {
      const series = scrape
        .split('\n')
        .map((line) => /^(sf_router_active_connections|sf_router_listen_backlog)(?:\{([^}]*)\})? (\S+)$/.exec(line))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => ({
          series: `${m[1]}{${['instance="router"', ...(m[2] ? [m[2]] : [])].join(',')}}`,
          values: m[3]!,
        }));
      const work = mkdtempSync(join(dir, 'promtool-'));
      writeFileSync(
        join(work, 'rules.yml'),
        JSON.stringify({ groups: [{ name: 'router', rules: [{ alert: 'QueueShorterThanClients', expr }] }] }),
      );
      writeFileSync(
        join(work, 'test.yml'),
        JSON.stringify({
          rule_files: ['rules.yml'],
          evaluation_interval: '1m',
          tests: [
            {
              interval: '1m',
              input_series: series,
              alert_rule_test: [
                {
                  eval_time: '0m',
                  alertname: 'QueueShorterThanClients',
                  exp_alerts: firing.map((port) => ({ exp_labels: { instance: 'router', port: String(port) } })),
                },
              ],
            },
          ],
        }),
      );
      try {
        return {
          ok: true,
          output: execFileSync('promtool', ['test', 'rules', join(work, 'test.yml')], { encoding: 'utf8' }),
        };
      } catch (err) {
        const e = err as { stdout?: string; stderr?: string };
        return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
      }
    }

    it('lets the documented query find a port holding more clients than its queue (promtool, real scrape)', async function () {
      try {
        execFileSync('promtool', ['--version'], { stdio: 'ignore' });
      } catch {
        this.skip();
      }
      const expr = documentedQueueExpression();
      const { router, routePort, adminPort } = await startRouterWith(['--backlog', '64']);
      const sockets: Socket[] = [];
      try {
        for (let i = 0; i < 70; i++) {
          const socket = await connectTo(routePort);
          sockets.push(socket);
          socket.write('ping\n');
          expect(await readLine(socket, 10_000)).to.equal('pong');
        }
        const scrape = async (): Promise<string> => routerAdminText(adminPort, '/metrics');
        const held = await scrape();
        expect(held).to.contain('sf_router_listen_backlog 64\n');
        const over = promtoolAgrees(expr, held, [routePort]);
        expect(over.ok, over.output).to.equal(true);
        // Fewer clients than the queue holds: nothing to report.
        for (const socket of sockets.splice(0, 20)) socket.destroy();
        await eventually(
          async () => /sf_router_active_connections\{[^}]*\} 50\n/.test(await scrape()),
          10_000,
          '50 left',
        );
        const under = promtoolAgrees(expr, await scrape(), []);
        expect(under.ok, under.output).to.equal(true);
      } finally {
        for (const socket of sockets) socket.destroy();
        await router.stop();
      }
    });

    it('warns when --backlog asks for more than the kernel holds, and reports what it holds', async () => {
      const asked = somaxconn! + 1000;
      const { router, adminPort } = await startRouterWith(['--backlog', String(asked)]);
      try {
        const health = (await (await fetch(`http://127.0.0.1:${adminPort}/health`)).json()) as {
          accept: { backlog: { requested: number; effective: number } };
        };
        expect(health.accept.backlog).to.include({ requested: asked, effective: somaxconn });
        expect(router.output()).to.contain('listen backlog above net.core.somaxconn');
      } finally {
        await router.stop();
      }
    });

    it('gives every worker of --workers 2 the same queue, on the JS path too', async () => {
      // Node listens again on an adopted descriptor with its default of 511 unless told otherwise.
      const { router, routePort } = await startRouterWith(['--workers', '2'], { SF_RELAY: 'js' });
      try {
        let queues: number[] = [];
        await eventually(
          async () => {
            queues = listenQueueSizes(routePort);
            return queues.length === 2;
          },
          10_000,
          'both workers listening',
        );
        expect(queues).to.deep.equal([somaxconn, somaxconn]);
      } finally {
        await router.stop();
      }
    });

    it('refuses a backlog of 0 with exit code 2, naming the flag', async () => {
      const file = join(dir, 'backlog-zero.json');
      writeFileSync(file, JSON.stringify({ version: 1, routes: [] }));
      const { code, output } = await runSfToExit([
        'router',
        '--routes',
        file,
        '--backlog',
        '0',
        '--admin',
        '127.0.0.1:0',
      ]);
      expect(code).to.equal(2);
      expect(output).to.contain('--backlog');
    });
  });
});
