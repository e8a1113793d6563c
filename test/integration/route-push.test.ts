import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Router } from '../../router/router';
import { silentLogger } from '../../common/logger';
import { type SfError } from '../../common/errors';
import type { RouteTable } from '../../protocol/route-model';
import { routerGroupKeys } from '../../protocol/keys';
import { RedisRouteSource, type RedisRouteSourceOptions } from '../../router/route-source-redis';
import { startControlHarness, type ControlHarness } from '../helpers/control-harness';
import { freePort } from '../helpers/free-port';
import { startRedisServer } from '../helpers/redis-server';
import { connectTo, eventually, readLine } from '../helpers/tcp-client';
import { startEchoServer, type TestServer } from '../helpers/tcp-servers';

/** A RouteSource with a recording listener, for tests that need no real router. */
class RecordingSource {
  tables: RouteTable[] = [];
  errors: SfError[] = [];
  connectivity: boolean[] = [];
  readonly source: RedisRouteSource;

  constructor(options: RedisRouteSourceOptions) {
    this.source = new RedisRouteSource(options);
  }

  start(): Promise<void> {
    return this.source.start({
      onTable: (t) => this.tables.push(t),
      onError: (e) => this.errors.push(e),
      onConnectivity: (c) => this.connectivity.push(c),
    });
  }

  get last(): RouteTable {
    return this.tables[this.tables.length - 1];
  }

  ports(): number[] {
    return this.last.routes.map((r) => r.port).sort((a, b) => a - b);
  }
}

async function clientIdByName(redis: Redis, name: string): Promise<string> {
  const list = (await redis.call('CLIENT', 'LIST')) as string;
  const line = list.split('\n').find((l) => l.includes(` name=${name} `));
  if (!line) throw new Error(`no Redis client named ${name}`);
  return /id=(\d+)/.exec(line)![1];
}

async function echoThrough(host: string, port: number): Promise<string> {
  const socket = await connectTo(port, host);
  try {
    socket.write('ping\n');
    return await readLine(socket);
  } finally {
    socket.destroy();
  }
}

describe('route push through Redis', function () {
  let h: ControlHarness;
  let admin: Redis;
  let echo: TestServer;
  let groupGuid: string;
  let ports: number[];
  const cleanups: Array<() => Promise<void>> = [];
  const opts = (routerId: string, extra: Partial<RedisRouteSourceOptions> = {}): RedisRouteSourceOptions => ({
    redisUrl: h.redis.url,
    routerGroup: 'push',
    routerId,
    heartbeatIntervalMs: 100,
    ...extra,
  });
  const create = async (port: number, extra: Record<string, unknown> = {}) => {
    const res = await h.api('POST', '/routing/v1/tcp_routes/create', [
      { router_group_guid: groupGuid, port, backend_ip: '127.0.0.1', backend_port: echo.port, ...extra },
    ]);
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
  };
  const remove = (port: number) =>
    h.api('POST', '/routing/v1/tcp_routes/delete', [
      { router_group_guid: groupGuid, port, backend_ip: '127.0.0.1', backend_port: echo.port },
    ]);
  const recording = async (routerId: string, extra: Partial<RedisRouteSourceOptions> = {}) => {
    const s = new RecordingSource(opts(routerId, extra));
    await s.start();
    cleanups.push(() => s.source.stop());
    return s;
  };

  before(async function () {
    h = await startControlHarness();
    admin = new Redis(h.redis.url);
    echo = await startEchoServer();
    ports = [];
    while (ports.length < 6) {
      const p = await freePort();
      if (!ports.includes(p)) ports.push(p);
    }
    const res = await h.api<{ guid: string }>('POST', '/routing/v1/router_groups', {
      name: 'push',
      type: 'tcp',
      reservable_ports: ports.join(','),
    });
    groupGuid = res.body.guid;
  });
  afterEach(async function () {
    for (const c of cleanups.splice(0)) await c();
    for (const port of ports) await remove(port);
  });
  after(async function () {
    admin.disconnect();
    await echo.stop();
    await h.stop();
  });

  it('applies a change in two routers, which then relay through the new port', async function () {
    const routers = [
      new Router({ logger: silentLogger(), bindHost: '127.0.0.1' }),
      new Router({ logger: silentLogger(), bindHost: '127.0.0.2' }),
    ];
    cleanups.push(async () => {
      for (const r of routers) await r.close();
    });
    await routers[0].start(new RedisRouteSource(opts('r1')));
    await routers[1].start(new RedisRouteSource(opts('r2')));
    await create(ports[0]);
    await eventually(
      () => routers.every((r) => r.currentTable().routes.some((x) => x.port === ports[0])),
      3000,
      'both routers applied',
    );
    expect(routers[0].currentTable().version).to.equal(routers[1].currentTable().version);
    expect(await echoThrough('127.0.0.1', ports[0])).to.equal('ping');
    expect(await echoThrough('127.0.0.2', ports[0])).to.equal('ping');
  });

  it('reports each router and its applied version through heartbeats', async function () {
    const a = await recording('hb-a');
    const b = await recording('hb-b');
    await create(ports[1]);
    await eventually(() => a.ports().includes(ports[1]) && b.ports().includes(ports[1]));
    const version = a.last.version;
    await eventually(
      async () => {
        const res = await h.api<Array<{ routerId: string; version: number }>>(
          'GET',
          `/routing/v1/router_groups/${groupGuid}/routers`,
        );
        const mine = res.body.filter((r) => r.routerId.startsWith('hb-'));
        return mine.length === 2 && mine.every((r) => r.version === version);
      },
      3000,
      'both heartbeats at the applied version',
    );
    await a.source.stop();
    const res = await h.api<Array<{ routerId: string }>>('GET', `/routing/v1/router_groups/${groupGuid}/routers`);
    expect(res.body.map((r) => r.routerId)).to.not.include('hb-a');
  });

  it('reports a version in its heartbeat only once the listener served that table', async function () {
    // A listener whose applies settle only when the test says so, like a router opening a port.
    let release: () => void = () => undefined;
    const tables: RouteTable[] = [];
    const source = new RedisRouteSource(opts('slow-apply'));
    await source.start({
      onTable: (t) => {
        tables.push(t);
        return t.routes.some((r) => r.port === ports[2]) ? new Promise<void>((r) => (release = r)) : undefined;
      },
      onError: () => undefined,
    });
    cleanups.push(() => source.stop());
    const beat = async (): Promise<number | undefined> => {
      const res = await h.api<Array<{ routerId: string; version: number }>>(
        'GET',
        `/routing/v1/router_groups/${groupGuid}/routers`,
      );
      return res.body.find((r) => r.routerId === 'slow-apply')?.version;
    };
    await eventually(async () => (await beat()) !== undefined, 3000, 'first heartbeat');
    const before = (await beat())!;
    await create(ports[2]);
    await eventually(() => tables.some((t) => t.routes.some((r) => r.port === ports[2])), 3000, 'table delivered');
    const delivered = tables.at(-1)!.version;
    // Several heartbeat intervals (100 ms) pass: the delivered version is not reported.
    await new Promise((r) => setTimeout(r, 500));
    expect(await beat()).to.equal(before);
    expect(delivered).to.be.greaterThan(before);
    release();
    await eventually(async () => (await beat()) === delivered, 3000, 'heartbeat at the served version');
  });

  it('serves the rest of a pushed table when another process holds a port, reports it, and opens it once freed', async function () {
    // What holds the port here answers anything: a client that reached it would bypass the route.
    const holder = createServer((c) => c.end('not the route\n'));
    await new Promise<void>((r) => holder.listen(ports[3], '127.0.0.1', r));
    let holderOpen = true;
    cleanups.push(async () => {
      if (holderOpen) await new Promise((r) => holder.close(r));
    });
    await create(ports[3]);
    await create(ports[4]);
    const router = new Router({ logger: silentLogger(), bindHost: '127.0.0.1', listenRetryMs: 200 });
    cleanups.push(() => router.close());
    // A pushed table with one squatted port still starts the router: the other route serves.
    await router.start(new RedisRouteSource(opts('squat')));
    expect(await echoThrough('127.0.0.1', ports[4])).to.equal('ping');
    const failures = router.status().listenFailures;
    expect(failures.count).to.equal(1);
    expect(failures.ports[0]).to.include({ port: ports[3] });
    expect(failures.ports[0]!.reason).to.include('EADDRINUSE');
    const beat = async (): Promise<{ failedPorts?: Array<{ port: number; reason: string }> } | undefined> => {
      const res = await h.api<Array<{ routerId: string; failedPorts?: Array<{ port: number; reason: string }> }>>(
        'GET',
        `/routing/v1/router_groups/${groupGuid}/routers`,
      );
      return res.body.find((r) => r.routerId === 'squat');
    };
    await eventually(async () => (await beat())?.failedPorts?.[0]?.port === ports[3], 3000, 'heartbeat names the port');
    await new Promise((r) => holder.close(r));
    holderOpen = false;
    // Retried every 200 ms: the port opens without a new table.
    await eventually(() => router.status().listenFailures.count === 0, 5000, 'port opened on a retry');
    expect(await echoThrough('127.0.0.1', ports[3])).to.equal('ping');
    await eventually(async () => (await beat())?.failedPorts === undefined, 3000, 'heartbeat clear');
  });

  it('converges via the snapshot after its subscription was cut', async function () {
    const a = await recording('cut-a');
    const b = await recording('cut-b');
    await admin.call('CLIENT', 'KILL', 'ID', await clientIdByName(admin, 'sf-router:cut-a:sub'));
    await create(ports[2]);
    await create(ports[3]);
    await eventually(() => b.ports().includes(ports[3]), 3000, 'b applied');
    await eventually(() => a.last.version === b.last.version, 3000, 'a converged');
    expect(a.ports()).to.deep.equal(b.ports());
  });

  it('re-reads the snapshot when a delta never arrived (no reconnect)', async function () {
    const a = await recording('lost-a');
    const keys = routerGroupKeys('push');
    // A change written the way control writes it, minus the publish: only the heartbeat's
    // version check can notice it.
    const version = Number(await admin.get(keys.version)) + 1;
    const route = {
      port: ports[4],
      routerGroup: 'push',
      mode: 'primary',
      backends: [
        { id: 'x', host: '127.0.0.1', port: echo.port, role: 'primary', weight: 1, epoch: 1, state: 'active' },
      ],
    };
    await admin.multi().set(keys.version, version).hset(keys.routes, String(ports[4]), JSON.stringify(route)).exec();
    await eventually(() => a.last.version === version, 3000, 'snapshot re-read');
    expect(a.ports()).to.include(ports[4]);
    await admin.multi().incr(keys.version).hdel(keys.routes, String(ports[4])).exec();
    await eventually(() => !a.ports().includes(ports[4]), 3000, 'removal seen');
  });

  it('re-reads the snapshot on a version gap instead of applying the delta', async function () {
    const a = await recording('gap-a');
    const keys = routerGroupKeys('push');
    const bogus = { version: a.last.version + 5, upserts: [], deletes: [] };
    await admin.publish(keys.channel, JSON.stringify(bogus));
    await create(ports[5]);
    await eventually(() => a.ports().includes(ports[5]), 3000, 'applied after the gap');
    expect(a.last.version).to.equal(Number(await admin.get(keys.version)));
  });

  it('refuses a snapshot whose version went backwards (a wiped store) and keeps its table', async function () {
    const a = await recording('back-a');
    const keys = routerGroupKeys('push');
    await create(ports[0]);
    await eventually(() => a.ports().includes(ports[0]), 3000, 'route applied');
    const before = a.last;
    expect(before.routes.length).to.be.greaterThan(0);
    // What a store that restarted empty looks like to a router: an older version, no routes.
    // A delta with a gap makes the router re-read that snapshot.
    await admin.multi().set(keys.version, 1).del(keys.routes).exec();
    await admin.publish(keys.channel, JSON.stringify({ version: before.version + 7, upserts: [], deletes: [] }));
    await eventually(
      () => a.errors.some((e) => e.code === 'SF_ERR_ROUTE_VERSION_BACKWARDS'),
      3000,
      'backwards version refused',
    );
    expect(a.last.version).to.equal(before.version);
    expect(a.ports()).to.deep.equal(before.routes.map((r) => r.port).sort((x, y) => x - y));
  });

  it('reports lost and regained connectivity and resyncs', async function () {
    const a = await recording('conn-a');
    for (const name of ['sf-router:conn-a', 'sf-router:conn-a:sub']) {
      await admin.call('CLIENT', 'KILL', 'ID', await clientIdByName(admin, name));
    }
    await eventually(
      () => a.connectivity.includes(false) && a.connectivity[a.connectivity.length - 1] === true,
      3000,
      'down then up',
    );
    expect(a.errors.map((e) => e.code)).to.include('SF_ERR_ROUTE_SOURCE');
  });

  it('serves its persisted table when restarted while Redis is down', async function () {
    const dir = mkdtempSync(join(tmpdir(), 'sf-route-cache-'));
    const cacheFile = join(dir, 'routes.json');
    const redis = await startRedisServer();
    const other = await startControlHarness({}, redis);
    cleanups.push(async () => {
      await other.stop();
      await redis.stop();
      rmSync(dir, { recursive: true, force: true });
    });
    const port = ports[0];
    await other.api('POST', '/routing/v1/router_groups', { name: 'push', type: 'tcp', reservable_ports: String(port) });
    const guid = (await other.api<Array<{ guid: string; name: string }>>('GET', '/routing/v1/router_groups?name=push'))
      .body[0].guid;
    await other.api('POST', '/routing/v1/tcp_routes/create', [
      { router_group_guid: guid, port, backend_ip: '127.0.0.1', backend_port: echo.port },
    ]);

    const first = new Router({ logger: silentLogger() });
    await first.start(new RedisRouteSource({ ...opts('restart'), redisUrl: redis.url, cacheFile }));
    expect(first.currentTable().routes.map((r) => r.port)).to.deep.equal([port]);
    await first.close();
    await redis.stop();

    const source = new RedisRouteSource({
      ...opts('restart'),
      redisUrl: redis.url,
      cacheFile,
      initialConnectTimeoutMs: 300,
    });
    const second = new Router({ logger: silentLogger() });
    cleanups.push(() => second.close());
    await second.start(source);
    expect(second.currentTable().routes.map((r) => r.port)).to.deep.equal([port]);
    expect(second.status().sourceConnected).to.equal(false);
    expect(await echoThrough('127.0.0.1', port)).to.equal('ping');
  });

  it('refuses to start with Redis down and no cache file', async function () {
    const dead = await freePort();
    const source = new RedisRouteSource({
      ...opts('nocache'),
      redisUrl: `redis://127.0.0.1:${dead}`,
      initialConnectTimeoutMs: 200,
    });
    const router = new Router({ logger: silentLogger() });
    try {
      await router.start(source);
      expect.fail('start should have failed');
    } catch (err) {
      expect((err as SfError).code).to.equal('SF_ERR_ROUTE_SOURCE');
    } finally {
      await router.close();
    }
  });
});
