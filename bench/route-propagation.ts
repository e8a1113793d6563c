/**
 * How fast does a route change reach the routers? (DESIGN.md targets: visible in every router
 * with p99 under 50 ms; a 10,000-route table applied in under 100 ms with no existing
 * connection dropped.)
 *
 * 1. Propagation: control API call (HTTP, Redis commit, publish) until two real Routers, each
 *    fed by its own RedisRouteSource, have applied the change. Measured per change; p50/p99.
 * 2. Bulk: one API call creating 10,000 routes while 1,000 client connections stay open through
 *    one router; time to delivery and to a fully applied table (every new port listening), and
 *    how many of the open connections survived (each is echo-checked afterwards).
 *
 * Writes bench/results/route-propagation.json. `--quick` runs fewer changes.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import pino from 'pino';
import { startControlServer, type ControlServer } from '../control/control-server';
import { Router } from '../router/router';
import type { RouteTable } from '../protocol/route-model';
import { RedisRouteSource } from '../router/route-source-redis';
import type { RouteSource, RouteSourceListener } from '../router/route-source';
import { startRedisServer } from '../test/helpers/redis-server';
import { formatNumber, formatTable, writeResults } from './lib/report';

const QUICK = process.argv.includes('--quick');
const CHANGES = QUICK ? 50 : 500;
const BULK_ROUTES = 10_000;
const OPEN_CONNECTIONS = 1_000;
const TOKEN = 'bench-admin-token-0123456789';
const silent = pino({ level: 'silent' });

/**
 * Hands the first table to the router as usual, then applies later tables itself so each
 * apply can be timed to completion (new ports listening included).
 */
class TimedSource implements RouteSource {
  readonly description: string;
  router: Router | null = null;
  private waiters: Array<{ check: (t: RouteTable) => boolean; resolve: (ms: number) => void }> = [];
  lastApplyMs = 0;

  constructor(private readonly inner: RouteSource) {
    this.description = inner.description;
  }

  start(listener: RouteSourceListener): Promise<void> {
    let first = true;
    return this.inner.start({
      onTable: (table) => {
        if (first || !this.router) {
          first = false;
          listener.onTable(table);
          return;
        }
        const t0 = performance.now();
        void this.router.applyTable(table).then(() => {
          this.lastApplyMs = performance.now() - t0;
          const now = performance.now();
          this.waiters = this.waiters.filter((w) => {
            if (!w.check(table)) return true;
            w.resolve(now);
            return false;
          });
        });
      },
      onError: (e) => listener.onError(e),
      onConnectivity: (c) => listener.onConnectivity?.(c),
    });
  }

  /** Resolves with performance.now() of the first applied table that satisfies `check`. */
  waitFor(check: (t: RouteTable) => boolean): Promise<number> {
    return new Promise((resolve) => this.waiters.push({ check, resolve }));
  }

  reload(): Promise<void> {
    return this.inner.reload();
  }

  stop(): Promise<void> {
    return this.inner.stop();
  }
}

async function api(control: ControlServer, path: string, body: unknown): Promise<unknown> {
  const res = await fetch(`${control.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${path}: ${res.status} ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : null;
}

async function startRouter(
  redisUrl: string,
  group: string,
  id: string,
  bindHost: string,
): Promise<{ router: Router; source: TimedSource }> {
  const source = new TimedSource(new RedisRouteSource({ redisUrl, routerGroup: group, routerId: id }));
  const router = new Router({ logger: silent, bindHost, maxConnections: 1_000_000 });
  source.router = router;
  await router.start(source);
  return { router, source };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function startEcho(): Promise<Server> {
  return new Promise((resolve) => {
    const srv = createServer((s) => s.pipe(s));
    srv.maxConnections = 100_000;
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

async function openConnections(port: number, count: number): Promise<{ sockets: Socket[]; closed: () => number }> {
  let closed = 0;
  const sockets: Socket[] = [];
  for (let i = 0; i < count; i += 100) {
    const batch = await Promise.all(
      Array.from(
        { length: Math.min(100, count - i) },
        () =>
          new Promise<Socket>((resolve, reject) => {
            const s = connect(port, '127.0.0.1', () => resolve(s));
            s.once('error', reject);
            s.once('close', () => closed++);
          }),
      ),
    );
    sockets.push(...batch);
  }
  return { sockets, closed: () => closed };
}

/** Writes a line on every socket and counts those that echo it back. */
async function echoCheck(sockets: Socket[]): Promise<number> {
  const ok = await Promise.all(
    sockets.map(
      (s) =>
        new Promise<boolean>((resolve) => {
          if (s.destroyed) return resolve(false);
          const timer = setTimeout(() => resolve(false), 5_000);
          s.once('data', () => {
            clearTimeout(timer);
            resolve(true);
          });
          s.write('x\n');
        }),
    ),
  );
  return ok.filter(Boolean).length;
}

async function main(): Promise<void> {
  const redis = await startRedisServer();
  const control = await startControlServer({
    redisUrl: redis.url,
    port: 0,
    adminToken: TOKEN,
    logger: silent,
    bodyLimitBytes: 16 * 1024 * 1024,
  });
  const echo = await startEcho();
  const echoPort = (echo.address() as { port: number }).port;
  const cleanup: Array<() => Promise<unknown> | void> = [
    () => redis.stop(),
    () => control.close(),
    () => void echo.close(),
  ];
  try {
    // Phase 1: propagation to two routers (127.0.0.1 and 127.0.0.2 share the port numbers).
    const prop = (await api(control, '/routing/v1/router_groups', {
      name: 'prop',
      type: 'tcp',
      reservable_ports: '40000-40009',
    })) as { guid: string };
    const routers = [
      await startRouter(redis.url, 'prop', 'bench-a', '127.0.0.1'),
      await startRouter(redis.url, 'prop', 'bench-b', '127.0.0.2'),
    ];
    cleanup.unshift(...routers.map((r) => () => r.router.close()));
    const port = 40000;
    const mapping = (weight: number) => ({
      router_group_guid: prop.guid,
      port,
      backend_ip: '127.0.0.1',
      backend_port: echoPort,
      weight,
    });
    await api(control, '/routing/v1/tcp_routes/create', [mapping(1)]);
    const samples: number[] = [];
    for (let i = 0; i < CHANGES; i++) {
      const weight = (i % 999) + 2;
      const applied = routers.map((r) =>
        r.source.waitFor((t) => t.routes.some((x) => x.port === port && x.backends[0]?.weight === weight)),
      );
      const t0 = performance.now();
      await api(control, '/routing/v1/tcp_routes/create', [mapping(weight)]);
      const done = Math.max(...(await Promise.all(applied)));
      samples.push(done - t0);
    }
    samples.sort((a, b) => a - b);
    for (const r of routers) await r.router.close();
    cleanup.splice(0, routers.length);

    // Phase 2: 10,000 routes at once while 1,000 connections stay open through one router.
    const bulk = (await api(control, '/routing/v1/router_groups', {
      name: 'bulk',
      type: 'tcp',
      reservable_ports: '20000-29999,30500',
    })) as { guid: string };
    const bulkRouter = await startRouter(redis.url, 'bulk', 'bench-bulk', '127.0.0.1');
    cleanup.unshift(() => bulkRouter.router.close());
    const keepPort = 30500;
    await api(control, '/routing/v1/tcp_routes/create', [
      // Permanent: an API route without ttl expires after --max-ttl, and this one must outlive the run.
      {
        router_group_guid: bulk.guid,
        port: keepPort,
        backend_ip: '127.0.0.1',
        backend_port: echoPort,
        permanent: true,
      },
    ]);
    await new Promise((r) => setTimeout(r, 100));
    const conns = await openConnections(keepPort, OPEN_CONNECTIONS);
    const echoedBefore = await echoCheck(conns.sockets);
    const routes = Array.from({ length: BULK_ROUTES }, (_, i) => ({
      router_group_guid: bulk.guid,
      port: 20000 + i,
      backend_ip: '127.0.0.1',
      backend_port: echoPort,
      permanent: true,
    }));
    const applied = bulkRouter.source.waitFor((t) => t.routes.length >= BULK_ROUTES + 1);
    const t0 = performance.now();
    await api(control, '/routing/v1/tcp_routes/create', routes);
    const tApi = performance.now();
    const tApplied = await applied;
    const echoedAfter = await echoCheck(conns.sockets);
    const dropped = conns.closed();
    for (const s of conns.sockets) s.destroy();

    const propagation = {
      changes: samples.length,
      p50Ms: percentile(samples, 50),
      p99Ms: percentile(samples, 99),
      maxMs: samples[samples.length - 1],
    };
    const bulkResult = {
      routes: BULK_ROUTES,
      apiCallMs: tApi - t0,
      apiToAppliedMs: tApplied - t0,
      routerApplyMs: bulkRouter.source.lastApplyMs,
      openConnections: OPEN_CONNECTIONS,
      echoedBefore,
      echoedAfter,
      dropped,
    };
    process.stdout.write(
      formatTable(
        ['measure', 'value', 'target'],
        [
          ['propagation p50 (API -> 2 routers), ms', formatNumber(propagation.p50Ms), ''],
          ['propagation p99 (API -> 2 routers), ms', formatNumber(propagation.p99Ms), '< 50'],
          ['propagation max, ms', formatNumber(propagation.maxMs), ''],
          [`${BULK_ROUTES} routes: API call, ms`, formatNumber(bulkResult.apiCallMs), ''],
          [`${BULK_ROUTES} routes: API -> applied, ms`, formatNumber(bulkResult.apiToAppliedMs), ''],
          [`${BULK_ROUTES} routes: router apply, ms`, formatNumber(bulkResult.routerApplyMs), '< 100'],
          [`open connections dropped (of ${OPEN_CONNECTIONS})`, String(dropped), '0'],
          ['open connections echoing after', String(echoedAfter), String(OPEN_CONNECTIONS)],
        ],
      ) + '\n',
    );
    const file = writeResults('route-propagation', { quick: QUICK, propagation, bulk: bulkResult, samplesMs: samples });
    process.stdout.write(`results: ${file}\n`);
  } finally {
    for (const c of cleanup) await c();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`route-propagation: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
