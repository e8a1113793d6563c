/**
 * Services on the docker executor, every part real: control, a router and three `sf cell`
 * processes against a Docker daemon (test/helpers/docker-daemon.ts) with the engine images built
 * here. Created with `--executor docker` and an exporter sidecar, replicated, written through the
 * router; a container killed behind the executor's back (`docker kill`) is failed over like a
 * killed process; a restarted cell re-adopts its running containers. Skips, saying why, where no
 * daemon or images can be had.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { ServiceView } from '../../control/services';
import type { ActualInstance } from '../../protocol/cell-protocol';
import { keyLayout } from '../../protocol/keys';
import { DockerApi } from '../../cell/docker-api';
import { dockerCli } from '../../cell/docker-engine-tools';
import { primaryOf, promotedFrom, sf } from '../helpers/failover-support';
import { releaseDockerDaemon, useDockerDaemon } from '../helpers/docker-daemon';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';
import { eventually } from '../helpers/tcp-client';

const run = promisify(execFile);

interface Listed {
  Id: string;
  State: string;
  Labels: Record<string, string>;
}

async function psql(port: number, key: ServiceKeyAuth, sql: string): Promise<string> {
  const { stdout } = await run(
    'psql',
    ['-h', '127.0.0.1', '-p', String(port), '-U', key.username, '-d', 'postgres', '-w', '-At', '-c', sql],
    { timeout: 10_000, env: { PATH: process.env.PATH ?? '', PGPASSWORD: key.password } },
  );
  return stdout.trim();
}

async function metrics(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
  return res.text();
}

describe('services on the docker executor (real daemon)', function () {
  this.timeout(300_000);
  let socketPath = '';
  let api: DockerApi;
  let cluster: ServiceCluster | undefined;

  before(async function () {
    this.timeout(3_600_000);
    const daemon = await useDockerDaemon();
    if (typeof daemon === 'string') {
      console.log(`      skipped: ${daemon}`);
      this.skip();
    }
    socketPath = daemon.socketPath;
    api = new DockerApi({ socketPath });
    // A cell SIGKILLed and started again stays registered meanwhile, so its replicas are not
    // replaced elsewhere: what the restart test checks is that it re-adopts them.
    cluster = await startServiceCluster({
      cells: 3,
      cellEnv: { DOCKER_HOST: `unix://${socketPath}` },
      cellArgs: ['--heartbeat-ttl-ms', '20000'],
    });
  });

  after(async () => {
    const dataDir = cluster?.dataDir;
    await cluster?.stop();
    // Containers of a SIGKILLed cell outlive it, like its processes would.
    if (dataDir) for (const c of await containers(dataDir)) await api.call('DELETE', `/containers/${c.Id}?force=true`);
    await releaseDockerDaemon();
  });

  function c(): ServiceCluster {
    if (!cluster) throw new Error('no cluster');
    return cluster;
  }

  /** This cluster's containers, engines and sidecars, running or not. */
  async function containers(dataDir = c().dataDir): Promise<Listed[]> {
    const res = await api.call('GET', '/containers/json?all=1');
    return (res.body as Listed[]).filter((l) =>
      Object.entries(l.Labels).some(([k, v]) => k.endsWith('cell-data-dir') && v.startsWith(dataDir)),
    );
  }

  async function engineContainer(instanceId: string): Promise<Listed> {
    const found = (await containers()).filter((l) => l.Labels['sf.instance'] === instanceId && l.State === 'running');
    expect(found, `running container of ${instanceId}`).to.have.length(1);
    return found[0];
  }

  async function checkExporters(view: ServiceView, pattern: RegExp): Promise<void> {
    for (const i of view.instances) {
      expect(i.sidecars, `sidecars of ${i.id}`).to.have.length(1);
      const port = i.sidecars?.[0].port;
      expect(port, `sidecar port of ${i.id}`).to.be.a('number');
      await eventually(async () => pattern.test(await metrics(port as number)), 30_000, `${pattern} from ${i.id}`);
      const sidecar = (await containers()).find((l) => l.Labels['sf.sidecar-of'] === i.id && l.State === 'running');
      expect(sidecar, `sidecar container of ${i.id}`).to.not.equal(undefined);
    }
  }

  it('redis: --executor docker with a redis-exporter sidecar, replicated, written through the router', async () => {
    const created = await sf(c(), [
      'create-service',
      'redis',
      'dkv',
      '--replicas',
      '1',
      '--executor',
      'docker',
      '--sidecar',
      'redis-exporter',
      '--memory-mb',
      '256',
      '--cpus',
      '0.5',
      '--wait',
      '--timeout',
      '240',
    ]);
    expect(created.code, created.stderr).to.equal(0);
    const view = await c().waitForService(
      'dkv',
      60_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.sidecars?.[0]?.port),
    );
    expect(view.executor).to.equal('docker');
    expect(view.sidecars).to.deep.equal(['redis-exporter']);
    expect(view.resources).to.deep.equal({ memory_mb: 256, cpus: 0.5 });
    for (const i of view.instances) {
      // The service's limits are the container's.
      const inspect = await api.call('GET', `/containers/${(await engineContainer(i.id)).Id}/json`);
      const host = (inspect.body as { HostConfig: { Memory: number; NanoCpus: number } }).HostConfig;
      expect([host.Memory, host.NanoCpus]).to.deep.equal([256 * 1024 * 1024, 0.5e9]);
    }
    await checkExporters(view, /^redis_up 1$/m);
    const shown = await sf(c(), ['service', 'dkv']);
    expect(shown.stdout)
      .to.contain('SIDECARS')
      .and.to.contain(`redis-exporter:${view.instances[0].sidecars?.[0].port}`);

    const key = await serviceKey(c().api, 'dkv');
    const client = new Redis({ port: view.port, host: '127.0.0.1', maxRetriesPerRequest: 1, ...key });
    try {
      expect(await client.set('k', 'v')).to.equal('OK');
    } finally {
      client.disconnect();
    }
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const direct = new Redis({ port: replica.port!, host: replica.host!, maxRetriesPerRequest: 1, ...key });
    try {
      await eventually(async () => (await direct.get('k')) === 'v', 10_000, 'replicated');
    } finally {
      direct.disconnect();
    }
  });

  it('redis: a container killed behind the executor (docker kill) is failed over; the client reconnects', async () => {
    const view = await c().waitForService('dkv');
    const old = primaryOf(view);
    const key = await serviceKey(c().api, 'dkv', 'failover');
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
      const container = await engineContainer(old.id);
      const t0 = performance.now();
      await dockerCli(socketPath, ['kill', '--signal', 'KILL', container.Id]);
      for (let n = 0; ; n++) {
        try {
          if ((await client.set(`after-${n}`, 'x')) === 'OK') break;
        } catch {
          await new Promise((r) => setTimeout(r, 10));
        }
        if (performance.now() - t0 > 60_000) throw new Error('no write through the router within 60 s of the kill');
      }
      console.log(`      docker kill -> write served by the new primary: ${(performance.now() - t0).toFixed(0)} ms`);
      const after = await c().waitForService('dkv', 120_000, promotedFrom(old.id, view.epoch));
      expect(primaryOf(after).epoch).to.be.greaterThan(old.epoch);
      // The deposed primary is back as a replica, in a new container, its exporter with it.
      expect(after.instances.find((i) => i.id === old.id)?.role).to.equal('replica');
      const back = await engineContainer(old.id);
      expect(back.Id).to.not.equal(container.Id);
      expect(await client.get('before')).to.equal('1');
    } finally {
      client.disconnect();
    }
  });

  it('a restarted cell re-adopts its running containers and their sidecars', async () => {
    const view = await c().waitForService(
      'dkv',
      60_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.sidecars?.[0]?.port),
    );
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const before = await engineContainer(replica.id);
    const cell = c().cells.find((x) => x.name === replica.cell && x.proc.child.exitCode === null)!;
    cell.proc.child.kill('SIGKILL');
    await cell.proc.stop();
    const restartedAt = Date.now();
    await c().startCell(cell.name, cell.zone);
    // The new cell process reports the instance running, with its sidecar: it adopted them.
    await eventually(
      async () => {
        const text = await c().state.hget(keyLayout('sf:').cell(cell.name).actual, replica.id);
        const actual = text ? (JSON.parse(text) as ActualInstance) : undefined;
        return (
          actual !== undefined &&
          actual.updatedAt > restartedAt &&
          actual.state === 'running' &&
          actual.sidecars?.[0]?.port === replica.sidecars?.[0].port
        );
      },
      60_000,
      'the restarted cell reports the adopted instance and sidecar',
    );
    const after = await c().waitForService('dkv', 60_000, (v) =>
      v.instances.some((i) => i.id === replica.id && i.state === 'running' && i.sidecars?.[0]?.port),
    );
    // The same container, never restarted: the cell found it again.
    expect((await engineContainer(replica.id)).Id).to.equal(before.Id);
    const again = after.instances.find((i) => i.id === replica.id)!;
    expect(again.sidecars?.[0].port).to.equal(replica.sidecars?.[0].port);
    expect(await metrics(again.sidecars?.[0].port as number)).to.match(/^redis_up 1$/m);
  });

  it('postgres: --executor docker with a postgres-exporter sidecar, replicated, failed over after docker kill', async () => {
    const created = await c().api<ServiceView>('POST', '/v3/service_instances', {
      name: 'dpg',
      engine: 'postgres',
      replicas: 1,
      durability: 'async',
      executor: 'docker',
      sidecars: ['postgres-exporter'],
      volume: { size_mb: 128 },
    });
    expect(created.status, JSON.stringify(created.body)).to.equal(201);
    const key = await serviceKey(c().api, 'dpg');
    const view = await c().waitForService(
      'dpg',
      420_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.sidecars?.[0]?.port),
    );
    for (const i of view.instances) await engineContainer(i.id);
    await checkExporters(view, /^pg_up 1$/m);
    // The first connections may still meet the route's previous state; a client retries.
    await eventually(
      async () => (await psql(view.port, key, 'select 1').catch(() => '')) === '1',
      120_000,
      'a query through the router',
    );
    await psql(view.port, key, 'create table t(v text); insert into t values (1)');
    const replica = view.instances.find((i) => i.role === 'replica')!;
    await eventually(
      async () => (await psql(replica.port!, key, 'select count(*) from t').catch(() => '')) === '1',
      20_000,
      'streamed',
    );

    const old = primaryOf(view);
    const container = await engineContainer(old.id);
    const t0 = performance.now();
    await dockerCli(socketPath, ['kill', '--signal', 'KILL', container.Id]);
    await eventually(
      // Only a primary answers `f`: the router reaches the promoted standby.
      async () => (await psql(view.port, key, 'select pg_is_in_recovery()').catch(() => '')) === 'f',
      120_000,
      'the promoted standby through the router after the kill',
    );
    console.log(`      docker kill -> postgres primary served: ${(performance.now() - t0).toFixed(0)} ms`);
    await psql(view.port, key, "insert into t values ('after')");
    const after = await c().waitForService('dpg', 180_000, promotedFrom(old.id, view.epoch));
    expect(after.instances.find((i) => i.id === old.id)?.role).to.equal('replica');
    expect(await psql(after.port, key, 'select count(*) from t')).to.equal('2');
  });
});
