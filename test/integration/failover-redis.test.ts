/**
 * Redis failover and fencing on each executor (process, docker): a killed primary's replica is
 * promoted after the fence, manual policy, a planned switchover, and `sf fence` of a live primary
 * whose shot is the executor's (SIGKILL, a container kill on docker) with no client byte reaching
 * it after the route fence.
 */
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { FencingStepView as FencingStep } from '../../control';
import type { ServiceView } from '../../control/services';
import { describeEachExecutor } from '../helpers/executor-under-test';
import { primaryOf, promotedFrom, sf } from '../helpers/failover-support';
import { useServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey } from '../helpers/service-key';
import { eventually } from '../helpers/tcp-client';
import { aofText } from '../helpers/redis-aof';
import { routerAdminJson } from '../helpers/sf-process';

describeEachExecutor('failover: redis', function (executor) {
  // Containers start and stop slower than processes: the docker run gets more time per test.
  this.timeout(240_000);
  const running = useServiceCluster(() => ({ cells: 3, cellEnv: executor().cellEnv }));
  let cluster: ServiceCluster;
  beforeEach(() => {
    cluster = running();
  });

  it('promotes a replica when the primary engine is killed (SIGKILL; docker kill of its container); a client through the router reconnects to it', async () => {
    const created = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
      name: 'kv',
      engine: 'redis',
      replicas: 2,
      durability: 'async',
      volume: { sizeMb: 64 },
      ...executor().serviceFields,
    });
    expect(created.status).to.equal(201);
    const view = await cluster.waitForService('kv');
    const old = primaryOf(view);
    // Nothing answers without credentials; a key works on every instance of the service.
    const key = await serviceKey(cluster.api, 'kv');
    const client = new Redis({
      port: view.port,
      host: '127.0.0.1',
      retryStrategy: () => 20,
      maxRetriesPerRequest: null,
      ...key,
    });
    client.on('error', () => undefined);
    try {
      await client.set('before', '1');
      await eventually(
        async () => {
          const replica = view.instances.find((i) => i.role === 'replica')!;
          const direct = new Redis({ port: replica.port!, host: replica.host!, lazyConnect: true, ...key });
          try {
            await direct.connect();
            return (await direct.get('before')) === '1';
          } finally {
            direct.disconnect();
          }
        },
        10_000,
        'replicated',
      );

      const t0 = performance.now();
      await executor().killEngine(cluster, view, old.id);
      let served = false;
      let n = 0;
      while (!served) {
        try {
          served = (await client.set(`after-${n++}`, 'x')) === 'OK';
        } catch {
          await new Promise((r) => setTimeout(r, 10));
        }
        // Wide: a container's exit reaches the cell through the daemon's event, slower under load.
        if (performance.now() - t0 > 60_000) throw new Error('no write through the router within 60 s of the kill');
      }
      const ms = performance.now() - t0;
      console.log(`      kill -> write served by the new primary through the router: ${ms.toFixed(0)} ms`);

      const after = await cluster.waitForService('kv', 60_000, promotedFrom(old.id, view.epoch));
      const primary = primaryOf(after);
      expect(primary.epoch).to.equal(after.epoch).and.to.be.greaterThan(old.epoch);
      expect(await client.get('before')).to.equal('1');
      // The old primary is back, as a replica of the new one, never as a primary.
      const back = after.instances.find((i) => i.id === old.id)!;
      expect(back.role).to.equal('replica');
      const direct = new Redis({ port: back.port!, host: back.host!, ...key });
      try {
        await eventually(
          async () => /role:slave/.test(await direct.info('replication')),
          10_000,
          'old primary is a replica',
        );
      } finally {
        direct.disconnect();
      }
    } finally {
      client.disconnect();
    }

    const history = await cluster.api<{ resources: FencingStep[] }>('GET', '/v3/service_instances/kv/fencing');
    const steps = history.body.resources.map((s) => s.step).reverse();
    // Fencing strictly before promotion.
    const order = [
      'route-fence',
      'router-ack',
      'shoot',
      'lease-floor',
      'network-fence',
      'choose',
      'promote',
      'publish',
    ];
    const idx = order.map((s) => steps.indexOf(s as FencingStep['step']));
    expect(
      idx.every((i) => i >= 0),
      steps.join(','),
    ).to.equal(true);
    expect([...idx].sort((a, b) => a - b)).to.deep.equal(idx);
    expect(history.body.resources.find((s) => s.step === 'router-ack')?.outcome).to.equal('ok');
    expect(history.body.resources.every((s) => s.trigger === 'instance-failed')).to.equal(true);
  });

  it('manual policy: fences but promotes nothing until sf failover; the history lists every step', async () => {
    await cluster.api('POST', '/v3/service_instances', {
      name: 'man',
      engine: 'redis',
      replicas: 1,
      durability: 'async',
      volume: { sizeMb: 64 },
      fencing: { policy: 'manual' },
      ...executor().serviceFields,
    });
    const view = await cluster.waitForService('man');
    const old = primaryOf(view);
    await executor().killEngine(cluster, view, old.id);
    const fenced = await cluster.waitForService(
      'man',
      20_000,
      (v) => v.status === 'degraded' && /policy is manual/.test(v.message ?? ''),
    );
    await new Promise((r) => setTimeout(r, 1_000));
    const still = await cluster.waitForService('man', 1_000, () => true);
    expect(primaryOf(still).id).to.equal(old.id);
    expect(still.epoch).to.equal(fenced.epoch);
    const table = (await routerAdminJson(cluster.routerAdminPort, '/routes')) as {
      routes: Array<{ port: number; backends: Array<{ id: string; state: string; role: string }> }>;
    };
    const backends = table.routes.find((r) => r.port === view.port)?.backends ?? [];
    expect(backends.find((b) => b.id === old.id)?.state ?? 'fenced').to.equal('fenced');

    const res = await sf(cluster, ['failover', 'man', '--json']);
    expect(res.code, res.stderr).to.equal(0);
    const out = JSON.parse(res.stdout) as { steps: FencingStep[]; service: ServiceView };
    expect(out.steps.map((s) => s.step)).to.include.members(['choose', 'promote', 'publish']);
    const after = await cluster.waitForService('man', 60_000, promotedFrom(old.id, view.epoch));
    const client = new Redis({ port: after.port, host: '127.0.0.1', ...(await serviceKey(cluster.api, 'man')) });
    try {
      await eventually(
        async () => (await client.set('m', '1').catch(() => null)) === 'OK',
        10_000,
        'write after manual failover',
      );
    } finally {
      client.disconnect();
    }

    const hist = await sf(cluster, ['fencing', 'man']);
    expect(hist.code).to.equal(0);
    for (const step of [
      'route-fence',
      'router-ack',
      'shoot',
      'lease-floor',
      'network-fence',
      'choose',
      'promote',
      'publish',
    ])
      expect(hist.stdout).to.include(step);
    // A refused action (here: an unknown service, 404) is the caller's to fix: exit 2.
    const missing = await sf(cluster, ['fence', 'no-such-service']);
    expect(missing.code).to.equal(2);
    const usage = await sf(cluster, ['failover']);
    expect(usage.code).to.equal(2);
  });

  it('planned switchover of a healthy primary loses no acknowledged write', async () => {
    const view = await cluster.waitForService(
      'kv',
      30_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.state === 'running'),
    );
    const old = primaryOf(view);
    const target = view.instances.find((i) => i.role === 'replica')!.id;
    const key = await serviceKey(cluster.api, 'kv', 'switchover');
    const client = new Redis({
      port: view.port,
      host: '127.0.0.1',
      retryStrategy: () => 20,
      maxRetriesPerRequest: null,
      ...key,
    });
    client.on('error', () => undefined);
    const acked: string[] = [];
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          if ((await client.set(`sw-${i}`, String(i))) === 'OK') acked.push(`sw-${i}`);
        } catch {
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 300));
      const res = await cluster.api<{ steps: FencingStep[] }>('POST', '/v3/service_instances/kv/actions/failover', {
        to: target,
      });
      expect(res.status, JSON.stringify(res.body)).to.equal(200);
      expect(res.body.steps.map((s) => s.step)).to.include('catch-up');
      const after = await cluster.waitForService('kv', 60_000, promotedFrom(old.id, view.epoch));
      expect(primaryOf(after).id).to.equal(target);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      stop = true;
      await writer;
      client.disconnect();
    }
    const after = await cluster.waitForService('kv', 5_000, () => true);
    const p = primaryOf(after);
    const direct = new Redis({ port: p.port!, host: p.host!, ...key });
    try {
      const values = acked.length ? await direct.mget(...acked) : [];
      const lost = values.filter((v) => v === null).length;
      console.log(`      planned switchover: ${acked.length} acknowledged writes, ${lost} lost`);
      expect(lost).to.equal(0);
    } finally {
      direct.disconnect();
    }
    const bad = await cluster.api<{ error: { code: string } }>('POST', '/v3/service_instances/kv/actions/failover', {
      to: 'nope',
    });
    expect(bad.status).to.equal(400);
    expect(bad.body.error.code).to.equal('SF_ERR_INVALID_FAILOVER_TARGET');
  });
  it('sf fence of a live primary: the executor shoots it, and no client byte sent after the route fence reaches it', async () => {
    // Sync durability: every write the primary took is in its AOF (appendfsync always) before it
    // answers. Manual policy: nothing restarts the fenced primary, so its AOF stays as it was.
    const created = await cluster.api('POST', '/v3/service_instances', {
      name: 'fen',
      engine: 'redis',
      replicas: 1,
      durability: 'sync',
      volume: { sizeMb: 64 },
      fencing: { policy: 'manual' },
      ...executor().serviceFields,
    });
    expect(created.status, JSON.stringify(created.body)).to.equal(201);
    const view = await cluster.waitForService(
      'fen',
      90_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.state === 'running'),
    );
    const old = primaryOf(view);
    const engine = await executor().engineOf(cluster, view, old.id);
    expect(engine, `the running engine of ${old.id}`).to.be.a('string');
    const client = new Redis({
      port: view.port,
      host: '127.0.0.1',
      retryStrategy: () => 10,
      maxRetriesPerRequest: null,
      commandTimeout: 1_000,
      ...(await serviceKey(cluster.api, 'fen')),
    });
    client.on('error', () => undefined);
    await eventually(async () => (await client.set('warm', '1').catch(() => null)) === 'OK', 30_000, 'first write');
    const sent: Array<{ key: string; at: number }> = [];
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const key = `f-${i}`;
        sent.push({ key, at: Date.now() });
        await client.set(key, String(i)).catch(() => new Promise((r) => setTimeout(r, 5)));
      }
    })();
    const t0 = Date.now();
    try {
      await new Promise((r) => setTimeout(r, 500));
      const res = await sf(cluster, ['fence', 'fen']);
      expect(res.code, res.stderr).to.equal(0);
      // Writes keep coming for a while after the fence: none may land on the old primary.
      await new Promise((r) => setTimeout(r, 1_500));
    } finally {
      stop = true;
      await writer;
      client.disconnect();
    }
    const history = (await cluster.api<{ resources: FencingStep[] }>('GET', '/v3/service_instances/fen/fencing')).body
      .resources;
    const fenceStep = history.find((s) => s.step === 'route-fence' && s.instance_id === old.id);
    expect(fenceStep, JSON.stringify(history.map((s) => [s.step, s.outcome]))).to.not.equal(undefined);
    expect(history.find((s) => s.step === 'shoot' && s.instance_id === old.id)?.outcome).to.equal('ok');
    // STONITH by the executor: the process is gone; on docker the daemon saw a KILL of the container.
    expect(await executor().stillRunning(engine as string)).to.equal(false);
    expect(await executor().shotWithKill(engine as string, t0), 'killed with SIGKILL').to.equal(true);

    const onOld = await aofText(path.join(cluster.dataDir, old.cell, 'instances', old.id, 'data'));
    // The check reads the right place: the old primary took the writes sent before the fence.
    expect(onOld).to.include('\r\nf-0\r\n');
    // The promise holds from the routers' acknowledgement of the fenced table: a write sent
    // between the publish and a router applying it may still reach the old primary.
    const ackStep = history.find(
      (s) => s.step === 'router-ack' && Date.parse(s.at) >= Date.parse((fenceStep as FencingStep).at),
    );
    expect(ackStep?.outcome, JSON.stringify(history.map((s) => [s.step, s.outcome]))).to.equal('ok');
    const fencedAt = Date.parse((ackStep as FencingStep).at);
    const late = sent.filter((s) => s.at > fencedAt);
    expect(late.length).to.be.greaterThan(0);
    const leaked = late.filter((s) => onOld.includes(`\r\n${s.key}\r\n`));
    console.log(
      `      ${sent.length} writes sent, ${late.length} after the fence, ${leaked.length} of those on the old primary`,
    );
    expect(leaked).to.deep.equal([]);
  });
});
