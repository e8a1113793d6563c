/**
 * One route's idle clients exhausted the router's descriptors and starved every
 * route, with no log line. The router-wide limit now comes from RLIMIT_NOFILE with headroom,
 * each route keeps a reservation, and a reached limit is logged (rate-limited) and counted.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { Router, createRouterMetrics, parseRouteTable, selectRelay } from '../../router';
import { reservedFds } from '../../router/connection-budget';
import { freePort } from '../helpers/free-port';
import { ROUTER_ADMIN_TOKEN, SF_BIN, routerAdminText, waitForHealth } from '../helpers/sf-process';
import { startEchoServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, eventually, readLine, sleep } from '../helpers/tcp-client';

interface LogLine {
  msg: string;
  [key: string]: unknown;
}

/** A client whose line came back through the router, or undefined when the router refused it. */
async function relayedClient(port: number): Promise<Socket | undefined> {
  const socket = await connectTo(port);
  socket.write('x\n');
  const line = await Promise.race([
    readLine(socket, 3000).catch(() => undefined),
    closed(socket, 3000).then(() => undefined),
  ]);
  if (line === 'x') return socket;
  socket.destroy();
  return undefined;
}

async function openClients(port: number, count: number): Promise<{ open: Socket[]; refused: number }> {
  const open: Socket[] = [];
  let refused = 0;
  for (let i = 0; i < count; i++) {
    const s = await relayedClient(port);
    if (s) open.push(s);
    else refused++;
  }
  return { open, refused };
}

function metricValue(text: string, name: string, labels = ''): number {
  const escaped = `${name}${labels}`.replace(/[{}]/g, (c) => `\\${c}`);
  const m = new RegExp(`^${escaped} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

describe('router connection limits', function () {
  this.timeout(60_000);
  let echo: TestServer;
  const sockets: Socket[] = [];

  before(async () => {
    echo = await startEchoServer();
  });

  afterEach(() => {
    for (const s of sockets.splice(0)) s.destroy();
  });

  after(async () => {
    await echo?.stop();
  });

  it("keeps accepting on one route while another route's idle clients hold the limit", async () => {
    const logs: LogLine[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l) as LogLine) });
    const router = new Router({ relay: selectRelay(), logger, maxConnections: 20, limitLogIntervalMs: 60_000 });
    const [hog, other] = [await freePort(), await freePort()];
    try {
      await router.applyTable(
        parseRouteTable({
          routes: [
            { port: hog, backends: [{ host: '127.0.0.1', port: echo.port }] },
            { port: other, backends: [{ host: '127.0.0.1', port: echo.port }] },
          ],
        }),
      );
      expect(router.status().connectionLimit).to.equal(20);
      // Idle clients of one route, more than the whole limit.
      const hogged = await openClients(hog, 30);
      sockets.push(...hogged.open);
      expect(hogged.open.length).to.equal(15);
      expect(hogged.refused).to.equal(15);
      // The other route still takes clients: its reservation was never the first route's to use.
      const served = await openClients(other, 5);
      sockets.push(...served.open);
      expect(served.open.length).to.equal(5);
      expect(served.refused).to.equal(0);
      // And once the whole limit is in use, nobody gets more.
      expect((await openClients(other, 1)).refused).to.equal(1);

      const limitLines = logs.filter((l) => String(l.msg).startsWith('router connection limit reached'));
      expect(limitLines).to.have.length(1);
      expect(limitLines[0]).to.include({ limit: 20, port: hog });
      const metrics = await createRouterMetrics(router, false).metrics();
      expect(metrics).to.contain(`sf_router_refused_max_connections_total{port="${hog}",sni=""} 15`);
      expect(metrics).to.contain(`sf_router_refused_max_connections_total{port="${other}",sni=""} 1`);
      expect(metricValue(metrics, 'sf_router_refused_global_limit_total')).to.equal(16);
      expect(metricValue(metrics, 'sf_router_connection_limit')).to.equal(20);
    } finally {
      await router.close();
    }
  });

  it("logs a route's own limit once per interval and counts every refusal", async () => {
    const logs: LogLine[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l) as LogLine) });
    const router = new Router({ relay: selectRelay(), logger, limitLogIntervalMs: 60_000 });
    const port = await freePort();
    try {
      await router.applyTable(
        parseRouteTable({ routes: [{ port, maxConnections: 2, backends: [{ host: '127.0.0.1', port: echo.port }] }] }),
      );
      const result = await openClients(port, 6);
      sockets.push(...result.open);
      expect(result.open.length).to.equal(2);
      const lines = logs.filter((l) => String(l.msg).startsWith('route connection limit reached'));
      expect(lines).to.have.length(1);
      expect(lines[0]).to.include({ port, limit: 2 });
      expect(router.routeStats()[0]!.refusedMaxConnections).to.equal(4);
      expect(router.refusedByGlobalLimit()).to.equal(0);
    } finally {
      await router.close();
    }
  });

  it('derives its limit from RLIMIT_NOFILE and stays up when clients reach it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sf-router-limits-'));
    const [routePort, admin] = [await freePort(), await freePort()];
    const file = join(dir, 'routes.json');
    writeFileSync(
      file,
      JSON.stringify({ routes: [{ port: routePort, backends: [{ host: '127.0.0.1', port: echo.port }] }] }),
    );
    const fdLimit = 256;
    const expected = Math.floor((fdLimit - reservedFds(1)) / 2);
    // Node cannot lower its own limit, so the shell does it before exec'ing the router.
    const child = spawn(
      'sh',
      [
        '-c',
        `ulimit -n ${fdLimit} && exec "$0" "$@"`,
        process.execPath,
        SF_BIN,
        'router',
        '--routes',
        file,
        '--admin',
        `127.0.0.1:${admin}`,
      ],
      {
        env: { ...process.env, SF_RELAY: process.env.SF_RELAY ?? 'auto', SF_API_TOKEN: ROUTER_ADMIN_TOKEN },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await waitForHealth(admin);
      const health = (await (await fetch(`http://127.0.0.1:${admin}/health`)).json()) as Record<string, unknown>;
      expect(health).to.include({ fdLimit, connectionLimit: expected });
      const result = await openClients(routePort, expected + 10);
      sockets.push(...result.open);
      expect(result.open.length).to.equal(expected);
      expect(result.refused).to.equal(10);
      // Descriptors are left: the admin endpoint answers, the metrics say why clients were refused.
      const metrics = await routerAdminText(admin, '/metrics');
      expect(metricValue(metrics, 'sf_router_fd_limit')).to.equal(fdLimit);
      expect(metricValue(metrics, 'sf_router_refused_global_limit_total')).to.equal(10);
      await eventually(() => output.includes('router connection limit reached'), 3000, 'limit log line');
      expect(output.split('router connection limit reached').length - 1).to.equal(1);
      // Freed slots are taken again.
      for (const s of result.open.splice(0, 5)) s.destroy();
      await sleep(200);
      const again = await openClients(routePort, 5);
      sockets.push(...again.open);
      expect(again.open.length).to.equal(5);
    } finally {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
