import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { ServiceView } from '../../control/services';
import { useServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { eventually } from '../helpers/tcp-client';
import { firstWrite } from '../helpers/redis-client';
import { serviceKey } from '../helpers/service-key';
import { routerAdminJson } from '../helpers/sf-process';

describe('service instances: redis', function () {
  this.timeout(120_000);
  const running = useServiceCluster({ cells: 3 });
  let cluster: ServiceCluster;
  beforeEach(() => {
    cluster = running();
  });

  it('places a primary and 2 replicas on 3 cells, serves writes through the router and replicates them', async () => {
    const t0 = performance.now();
    const created = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
      name: 'cache',
      engine: 'redis',
      replicas: 2,
      durability: 'async',
      volume: { sizeMb: 64 },
    });
    expect(created.status).to.equal(201);
    expect(created.body.port).to.be.within(cluster.routePorts[0], cluster.routePorts[1]);
    const port = created.body.port;

    // The first successful write through the router port is the user-visible "ready" moment.
    const key = await serviceKey(cluster.api, 'cache');
    const client = await firstWrite(port, 60_000, key);
    const firstQueryMs = performance.now() - t0;
    console.log(`      redis create-to-first-write through the router: ${firstQueryMs.toFixed(0)} ms`);

    const view = await cluster.waitForService('cache');
    expect(view.instances).to.have.length(3);
    expect(new Set(view.instances.map((i) => i.cell)).size).to.equal(3);
    expect(new Set(view.instances.map((i) => i.zone)).size).to.equal(3);
    expect(view.instances.filter((i) => i.role === 'primary')).to.have.length(1);
    for (const i of view.instances) {
      expect(i).to.include.keys('id', 'cell', 'role', 'state', 'epoch', 'host', 'port');
      expect(i.state).to.equal('running');
      expect(i.epoch).to.equal(1);
    }

    await client.set('k1', 'v1');
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const direct = new Redis({ port: replica.port!, host: replica.host!, maxRetriesPerRequest: 1, ...key });
    try {
      await eventually(
        async () => (await direct.get('k1')) === 'v1' && (await direct.get('greeting')) === 'hello',
        20_000,
        'replica has the writes',
      );
      const role = await direct.info('replication');
      expect(role).to.match(/role:slave/);
    } finally {
      direct.disconnect();
      client.disconnect();
    }

    // The router serves the primary only: a write through it never lands on a replica.
    const table = (await routerAdminJson(cluster.routerAdminPort, '/routes')) as {
      routes: Array<{ port: number; backends: Array<{ id: string; role: string }> }>;
    };
    const route = table.routes.find((r) => r.port === port)!;
    expect(route.backends.map((b) => b.id).sort()).to.deep.equal(view.instances.map((i) => i.id).sort());
  });

  it('records why each decision was made, in order', async () => {
    const events = await cluster.api<{ resources: Array<{ type: string; leader_token: number }> }>(
      'GET',
      '/v3/service_instances/cache/events',
    );
    const types = events.body.resources.map((e) => e.type).reverse();
    expect(types[0]).to.equal('service-created');
    expect(types.filter((t) => t === 'instance-placed')).to.have.length(3);
    expect(types).to.include('service-running');
    expect(types).to.not.include('instance-repointed');
    // Every decision is the leader's; what the API writes (creation, service keys) carries no token.
    const apiEvents = ['service-created', 'service-key-created', 'service-key-deleted'];
    expect(events.body.resources.filter((e) => !apiEvents.includes(e.type)).every((e) => e.leader_token > 0)).to.equal(
      true,
    );
  });

  it('lists services and cells', async () => {
    const list = await cluster.api<{ resources: ServiceView[] }>('GET', '/v3/service_instances');
    expect(list.body.resources.map((s) => s.name)).to.include('cache');
    const cells = await cluster.api<{
      resources: Array<{
        name: string;
        alive: boolean;
        zone: string;
        capacity_mb: number;
        used_mb: number;
        instances: unknown[];
      }>;
    }>('GET', '/v3/cells');
    expect(cells.body.resources.map((c) => c.name)).to.deep.equal(['cell-1', 'cell-2', 'cell-3']);
    for (const c of cells.body.resources) {
      expect(c.alive).to.equal(true);
      expect(c.used_mb).to.equal(64);
      expect(c.instances).to.have.length(1);
    }
  });

  it('deletes a service: stops its instances, removes its route and frees its port', async () => {
    const before = await cluster.api<ServiceView>('GET', '/v3/service_instances/cache');
    const port = before.body.port;
    const res = await cluster.api<ServiceView>('DELETE', '/v3/service_instances/cache');
    expect(res.status).to.equal(202);
    await eventually(
      async () => (await cluster.api('GET', '/v3/service_instances/cache')).status === 404,
      30_000,
      'service gone',
    );
    await eventually(
      async () => {
        const table = (await routerAdminJson(cluster.routerAdminPort, '/routes')) as {
          routes: Array<{ port: number }>;
        };
        return !table.routes.some((r) => r.port === port);
      },
      10_000,
      'route removed from the router',
    );
    const cells = await cluster.api<{ resources: Array<{ instances: unknown[] }> }>('GET', '/v3/cells');
    await eventually(
      async () => {
        const c = await cluster.api<{ resources: Array<{ instances: unknown[] }> }>('GET', '/v3/cells');
        return c.body.resources.every((x) => x.instances.length === 0);
      },
      30_000,
      'volumes deleted on every cell',
    );
    expect(cells.status).to.equal(200);
    const again = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
      name: 'cache2',
      engine: 'redis',
      replicas: 0,
      volume: { sizeMb: 64 },
    });
    expect(again.body.port).to.equal(port);
  });
});
