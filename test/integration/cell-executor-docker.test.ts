/**
 * The docker executor against a real Docker daemon (test/helpers/docker-daemon.ts: a running one,
 * or a private dockerd) with the engine images built here from Debian's packages. Skips, saying
 * why, where neither can be had.
 */
import { readFile } from 'node:fs/promises';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { InstanceCredentials } from '../../protocol/cell-protocol';
import { DockerApi } from '../../cell/docker-api';
import { dockerCli } from '../../cell/docker-engine-tools';
import { PostgresEngine } from '../../cell/engine-postgres';
import { REDIS_DESCRIPTOR_SLOTS, RedisEngine } from '../../cell/engine-redis';
import { DockerExecutor } from '../../cell/executor-docker';
import { ErrorCode } from '../../common/errors';
import { eventually, expectDescriptorTable, spec, tempCellDir } from '../helpers/cell-harness';
import { releaseDockerDaemon, useDockerDaemon } from '../helpers/docker-daemon';

const CREDS: InstanceCredentials = {
  version: 1,
  admin: { username: 'sf_admin', password: 'admin-password-0123456789' },
  replication: { username: 'sf_replication', password: 'replication-password-0123' },
  users: [],
};

async function uidOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
}

describe('DockerExecutor (real daemon)', function () {
  this.timeout(300_000);
  let socketPath = '';
  let api: DockerApi;
  let cell: { dir: string; remove(): Promise<void> };
  let executor: DockerExecutor;
  const clients: Redis[] = [];

  before(async function () {
    // The first run builds the engine images (minutes); later runs find them by version.
    this.timeout(3_600_000);
    const daemon = await useDockerDaemon((line) => {
      if (/^I: (running|installing|downloading)/.test(line)) console.log(`      image build: ${line}`);
    });
    if (typeof daemon === 'string') {
      console.log(`      skipped: ${daemon}`);
      this.skip();
    }
    socketPath = daemon.socketPath;
    api = new DockerApi({ socketPath });
  });

  after(async () => {
    await releaseDockerDaemon();
  });

  beforeEach(async () => {
    cell = await tempCellDir();
    executor = new DockerExecutor({ dataDir: cell.dir, portRange: { from: 23000, to: 23999 }, docker: { socketPath } });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    for (const h of executor?.handles() ?? []) await executor.kill(h.instanceId);
    await cell?.remove();
  });

  function redis(port: number, password?: string): Redis {
    const c = new Redis({
      port,
      host: '127.0.0.1',
      maxRetriesPerRequest: 1,
      ...(password ? { username: CREDS.admin.username, password } : {}),
    });
    clients.push(c);
    return c;
  }

  async function container(
    instanceId: string,
  ): Promise<{ HostConfig: Record<string, unknown>; Config: { User: string } }> {
    const res = await api.call('GET', `/containers/${executor.containerName(instanceId)}/json`);
    expect(res.status).to.equal(200);
    return res.body as { HostConfig: Record<string, unknown>; Config: { User: string } };
  }

  describe('redis', () => {
    it('runs the engine unprivileged in a container with the plan limits, replicates and promotes', async () => {
      const engine = new RedisEngine();
      const t0 = Date.now();
      const primary = await executor.start(
        spec({
          instanceId: 'r-0',
          engine: 'redis',
          durability: 'sync',
          replicas: 1,
          resources: { memoryMb: 128, cpus: 0.5 },
        }),
      );
      console.log(`      redis (docker): start to first successful query ${Date.now() - t0} ms`);
      expect(await redis(primary.port).ping()).to.equal('PONG');
      expect(await uidOf(primary.pid)).to.not.equal(0);
      // Started through bash in the image, which grew the table and became the server.
      expectDescriptorTable(primary.pid, 'redis-server', REDIS_DESCRIPTOR_SLOTS);
      const inspect = await container('r-0');
      expect(inspect.HostConfig.Memory).to.equal(128 * 1024 * 1024);
      expect(inspect.HostConfig.NanoCpus).to.equal(0.5e9);
      expect(inspect.HostConfig.NetworkMode).to.equal('host');
      expect(inspect.Config.User).to.match(/^[1-9]\d*:\d+$/);

      const replica = await executor.start(
        spec({
          instanceId: 'r-1',
          engine: 'redis',
          role: 'replica',
          replicaOf: { host: '127.0.0.1', port: primary.port },
        }),
      );
      await eventually(async () => (await redis(primary.port).set('k', 'v1')) === 'OK', 15_000, 'write with a replica');
      await eventually(async () => (await redis(replica.port).get('k')) === 'v1', 10_000, 'replica has k');
      await engine.promote(replica.context);
      expect((await engine.position(replica.context))?.role).to.equal('primary');
    });

    it('fences with docker kill, and sees a container killed behind its back as an exit', async () => {
      const h = await executor.start(spec({ instanceId: 'r-kill', engine: 'redis', durability: 'sync' }));
      await redis(h.port).set('durable', 'yes');
      await executor.kill('r-kill');
      expect(executor.status('r-kill')).to.include({ state: 'exited', signal: 'SIGKILL' });

      const again = await executor.start(spec({ instanceId: 'r-kill', engine: 'redis', durability: 'sync' }));
      expect(again.port).to.equal(h.port);
      expect(await redis(again.port).get('durable')).to.equal('yes');
      const exits: string[] = [];
      executor.onExit((id, status) => exits.push(`${id}:${status.signal}`));
      await dockerCli(socketPath, ['kill', '--signal', 'KILL', executor.containerName('r-kill')]);
      await eventually(async () => exits.includes('r-kill:SIGKILL'), 10_000, 'exit seen');
      expect(executor.handle('r-kill')).to.equal(undefined);
      // The exit is reported before the container's output is copied into the volume.
      await eventually(
        async () => (await readFile(`${again.volumeDir}/instance.log`, 'utf8')).includes('Ready to accept connections'),
        10_000,
        'the container output kept in instance.log',
      );
    });

    it('re-adopts its running containers after the cell restarts', async () => {
      const h = await executor.start(spec({ instanceId: 'r-adopt', engine: 'redis' }));
      const reborn = new DockerExecutor({
        dataDir: cell.dir,
        portRange: { from: 23000, to: 23999 },
        docker: { socketPath },
      });
      const adopted = await reborn.adopt();
      expect(adopted.map((a) => [a.instanceId, a.pid, a.port, a.adopted])).to.deep.equal([
        ['r-adopt', h.pid, h.port, true],
      ]);
      expect(await new RedisEngine().healthy(adopted[0].context)).to.equal(true);
      await reborn.kill('r-adopt');
      expect(reborn.status('r-adopt').state).to.equal('exited');
      await eventually(
        async () => executor.status('r-adopt').state === 'exited',
        10_000,
        'original executor sees exit',
      );
    });

    it('refuses an engine whose image is not in the daemon, naming the command that builds it', async () => {
      const bare = new DockerExecutor({
        dataDir: cell.dir,
        docker: { socketPath },
        images: { redis: 'service-foundry/redis:no-such-version' },
      });
      const err = await bare.start(spec({ instanceId: 'r-noimg', engine: 'redis' })).catch((e: unknown) => e);
      expect((err as { code: string }).code).to.equal(ErrorCode.ExecutorUnavailable);
      expect((err as Error).message).to.contain('sf images build');
    });
  });

  describe('postgres', () => {
    it('initdb, pg_basebackup, promote and pg_rewind all run in containers, with credentials', async () => {
      const engine = new PostgresEngine();
      const t0 = Date.now();
      const primary = await executor.start(
        spec({ instanceId: 'pg-0', engine: 'postgres', durability: 'sync', replicas: 1, credentials: CREDS }),
      );
      console.log(`      postgres (docker): start (initdb) to first successful query ${Date.now() - t0} ms`);
      expect(await uidOf(primary.pid)).to.not.equal(0);
      const replicaSpec = spec({
        instanceId: 'pg-1',
        engine: 'postgres',
        role: 'replica',
        durability: 'sync',
        replicas: 1,
        credentials: CREDS,
        replicaOf: { host: '127.0.0.1', port: primary.port },
      });
      const replica = await executor.start(replicaSpec);
      await engine.query(primary.context, "create table t(v text); insert into t values ('hello')");
      await eventually(
        async () => (await engine.query(replica.context, 'select v from t')).trim() === 'hello',
        15_000,
        'replica row',
      );

      // Failover: shoot the primary, promote the standby, write on it.
      await executor.kill('pg-0');
      await engine.promote(replica.context);
      expect((await engine.position(replica.context))?.role).to.equal('primary');
      const promoted = { ...replica.context, spec: { ...replicaSpec, role: 'primary' as const, replicaOf: undefined } };
      // With sync durability its commits wait for a standby, and the only one is the deposed
      // primary rejoining below: the service is told it has none for now (the settings reload).
      const alone = { ...promoted, spec: { ...promoted.spec, replicas: 0 } };
      await engine.applySettings(alone);
      await engine.query(alone, "insert into t values ('after')");

      // The deposed primary comes back as a standby of the new one: rewound inside a container.
      const rejoined = await executor.start(
        spec({
          instanceId: 'pg-0',
          engine: 'postgres',
          role: 'replica',
          durability: 'sync',
          replicas: 1,
          credentials: CREDS,
          replicaOf: { host: '127.0.0.1', port: replica.port },
        }),
      );
      await eventually(
        async () => (await engine.query(rejoined.context, "select count(*) from t where v = 'after'")).trim() === '1',
        30_000,
        'rewound standby has the new row',
      );
      expect((await engine.position(rejoined.context))?.role).to.equal('replica');
    });
  });
});
