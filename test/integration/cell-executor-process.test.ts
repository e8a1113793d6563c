import { chmod, mkdir } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { PostgresEngine } from '../../cell/engine-postgres';
import { REDIS_DESCRIPTOR_SLOTS, RedisEngine } from '../../cell/engine-redis';
import { TcpEngine } from '../../cell/engine-tcp';
import { ErrorCode } from '../../common/errors';
import { defaultListenBacklog } from '../../common/listen-backlog';
import { ProcessExecutor } from '../../cell/executor-process';
import { eventually, expectDescriptorTable, spec, tempCellDir } from '../helpers/cell-harness';

describe('ProcessExecutor', function () {
  this.timeout(180_000);
  let cell: { dir: string; remove(): Promise<void> };
  let executor: ProcessExecutor;
  const clients: Redis[] = [];

  beforeEach(async () => {
    cell = await tempCellDir();
    executor = new ProcessExecutor({ dataDir: cell.dir, portRange: { from: 21000, to: 21999 } });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    for (const h of executor.handles()) await executor.kill(h.instanceId);
    await cell.remove();
  });

  function redis(port: number): Redis {
    const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
    clients.push(c);
    return c;
  }

  describe('redis', () => {
    it('starts redis-server with its own data dir and port, and a replica follows the primary', async () => {
      const engine = new RedisEngine();
      const t0 = Date.now();
      const primary = await executor.start(
        spec({ instanceId: 'r-0', engine: 'redis', durability: 'sync', replicas: 1 }),
      );
      expect(await redis(primary.port).ping()).to.equal('PONG');
      console.log(`      redis: start to first successful query ${Date.now() - t0} ms`);
      expect(primary.dataDir).to.contain(cell.dir);
      expect(primary.port).to.be.within(21000, 21999);
      // Its queue is as deep as the router's in front of it, so a reconnect storm is not dropped there.
      expect(await redis(primary.port).config('GET', 'tcp-backlog')).to.deep.equal([
        'tcp-backlog',
        String(defaultListenBacklog()),
      ]);
      // Its descriptor table holds maxclients from the start, so a failover's storm never waits
      // for the kernel to grow it; the bash that grew it is gone (same PID, the server now), and
      // left no descriptor behind.
      expectDescriptorTable(primary.pid, 'redis-server', REDIS_DESCRIPTOR_SLOTS);
      // Sync durability: the primary refuses writes while no replica is attached.
      const refused = await redis(primary.port)
        .set('k', 'v0')
        .catch((err: Error) => err.message);
      expect(String(refused)).to.match(/NOREPLICAS/);

      const replica = await executor.start(
        spec({
          instanceId: 'r-1',
          engine: 'redis',
          role: 'replica',
          replicaOf: { host: '127.0.0.1', port: primary.port },
        }),
      );
      expect(replica.port).to.not.equal(primary.port);
      await eventually(
        async () => (await redis(primary.port).set('k', 'v1')) === 'OK',
        10_000,
        'write accepted with a replica',
      );
      await eventually(async () => (await redis(replica.port).get('k')) === 'v1', 10_000, 'replica has k');

      const p = await engine.position(primary.context);
      const r = await engine.position(replica.context);
      expect(p?.role).to.equal('primary');
      expect(r?.role).to.equal('replica');
      expect(Number(p?.value)).to.be.greaterThan(0);

      await engine.promote(replica.context);
      expect((await engine.position(replica.context))?.role).to.equal('primary');
      await redis(replica.port).set('k2', 'after-promote');
      expect(await redis(replica.port).get('k2')).to.equal('after-promote');
    });

    it('refuses to start a primary whose epoch is older than the one recorded', async () => {
      await executor.start(spec({ instanceId: 'r-epoch', engine: 'redis', epoch: 5 }));
      await executor.stop('r-epoch');
      try {
        await executor.start(spec({ instanceId: 'r-epoch', engine: 'redis', epoch: 4 }));
        expect.fail('started a stale primary');
      } catch (err) {
        expect((err as { code: string }).code).to.equal(ErrorCode.StaleEpoch);
      }
      expect(executor.status('r-epoch').state).to.equal('exited');
      const again = await executor.start(spec({ instanceId: 'r-epoch', engine: 'redis', epoch: 6 }));
      expect(again.pid).to.be.greaterThan(0);
    });

    it('keeps data across a stop and start, and kill is immediate', async () => {
      const h = await executor.start(spec({ instanceId: 'r-dur', engine: 'redis', durability: 'sync' }));
      await redis(h.port).set('durable', 'yes');
      await executor.kill('r-dur');
      expect(executor.status('r-dur').signal).to.equal('SIGKILL');
      const h2 = await executor.start(spec({ instanceId: 'r-dur', engine: 'redis', durability: 'sync' }));
      expect(h2.port).to.equal(h.port);
      expect(await redis(h2.port).get('durable')).to.equal('yes');
    });

    it('re-adopts a running instance after the cell restarts', async () => {
      const h = await executor.start(spec({ instanceId: 'r-adopt', engine: 'redis' }));
      const reborn = new ProcessExecutor({ dataDir: cell.dir, portRange: { from: 21000, to: 21999 } });
      const adopted = await reborn.adopt();
      expect(adopted.map((a) => [a.instanceId, a.pid, a.port])).to.deep.equal([['r-adopt', h.pid, h.port]]);
      await reborn.kill('r-adopt');
      expect(reborn.status('r-adopt').state).to.equal('exited');
      await eventually(async () => executor.status('r-adopt').state === 'exited', 5_000, 'original executor sees exit');
    });
  });

  describe('tcp', () => {
    it('runs any command listening on its port, with placeholders filled, healthy by TCP connect', async () => {
      const t0 = Date.now();
      const h = await executor.start(
        spec({
          instanceId: 't-0',
          engine: 'tcp',
          command: {
            file: process.execPath,
            args: [
              '-e',
              "require('net').createServer((s) => s.pipe(s)).listen(Number(process.argv[1]), process.argv[2])",
              '{port}',
              '{host}',
            ],
          },
        }),
      );
      const echoed = await new Promise<string>((resolve, reject) => {
        const s = connect(h.port, '127.0.0.1', () => s.write('hi'));
        s.once('data', (d: Buffer) => {
          s.destroy();
          resolve(d.toString());
        });
        s.once('error', reject);
      });
      console.log(`      tcp: start to first successful exchange ${Date.now() - t0} ms`);
      expect(echoed).to.equal('hi');
      const err = await new TcpEngine().promote().catch((e: unknown) => e);
      expect((err as { code: string }).code).to.equal(ErrorCode.EngineUnsupported);
    });
  });

  describe('postgres', () => {
    it('names an ancestor directory that shuts the postgres user out', async function () {
      if (process.getuid?.() !== 0) {
        console.log('      skipped: only a root cell runs postgres as another user');
        this.skip();
      }
      const inner = new ProcessExecutor({
        dataDir: path.join(cell.dir, 'closed', 'cell'),
        portRange: { from: 21000, to: 21999 },
      });
      await mkdir(path.join(cell.dir, 'closed', 'cell'), { recursive: true });
      await chmod(path.join(cell.dir, 'closed'), 0o700);
      const err = await inner.start(spec({ instanceId: 'pg-x', engine: 'postgres' })).catch((e: unknown) => e);
      expect((err as { code: string }).code).to.equal(ErrorCode.EngineUnavailable);
      expect((err as Error).message).to.contain(path.join(cell.dir, 'closed'));
    });

    it('runs a primary with initdb and a streaming replica via pg_basebackup, promotes it, reads LSNs', async () => {
      const engine = new PostgresEngine();
      const t0 = Date.now();
      const primary = await executor.start(
        spec({ instanceId: 'pg-0', engine: 'postgres', durability: 'sync', replicas: 1 }),
      );
      await engine.query(primary.context, 'select 1');
      console.log(`      postgres: start to first successful query ${Date.now() - t0} ms`);

      const t1 = Date.now();
      const replica = await executor.start(
        spec({
          instanceId: 'pg-1',
          engine: 'postgres',
          role: 'replica',
          durability: 'sync',
          replicas: 1,
          replicaOf: { host: '127.0.0.1', port: primary.port },
        }),
      );
      console.log(`      postgres replica: start (pg_basebackup) to healthy ${Date.now() - t1} ms`);
      // With synchronous_standby_names '*', this commit returns only once the standby has it.
      await engine.query(primary.context, "create table t(v text); insert into t values ('hello')");
      await eventually(
        async () => (await engine.query(replica.context, 'select v from t')).trim() === 'hello',
        10_000,
        'replica row',
      );

      const p = await engine.position(primary.context);
      const r = await engine.position(replica.context);
      expect(p?.role).to.equal('primary');
      expect(r?.role).to.equal('replica');
      expect(p?.position).to.match(/^[0-9A-F]+\/[0-9A-F]+$/);
      expect(BigInt(r?.value ?? '0') > 0n).to.equal(true);

      await executor.kill('pg-0');
      await engine.promote(replica.context);
      expect((await engine.position(replica.context))?.role).to.equal('primary');
      // The promoted primary keeps sync durability and has no standby yet, so this one write
      // opts out per transaction (until control repoints a replica to it).
      await engine.query(replica.context, "set synchronous_commit = local; insert into t values ('after')");
      expect((await engine.query(replica.context, 'select count(*) from t')).trim()).to.equal('2');
    });

    it('repoints a standby to a promoted peer: it follows the new timeline', async () => {
      const engine = new PostgresEngine();
      const p0 = await executor.start(spec({ instanceId: 'pg-a', engine: 'postgres' }));
      const replicaOf = { host: '127.0.0.1', port: p0.port };
      const [p1, p2] = await Promise.all([
        executor.start(spec({ instanceId: 'pg-b', engine: 'postgres', role: 'replica', replicaOf })),
        executor.start(spec({ instanceId: 'pg-c', engine: 'postgres', role: 'replica', replicaOf })),
      ]);
      await engine.query(p0.context, "create table t(v text); insert into t values ('1')");
      await eventually(
        async () => (await engine.query(p2.context, 'select count(*) from t')).trim() === '1',
        10_000,
        'pg-c has the row',
      );

      await executor.kill('pg-a');
      const positions = await Promise.all([engine.position(p1.context), engine.position(p2.context)]);
      expect(positions.every((p) => p?.role === 'replica')).to.equal(true);
      await engine.promote(p1.context);
      await engine.repoint(p2.context, { host: '127.0.0.1', port: p1.port });
      await engine.query(p1.context, "insert into t values ('2')");
      await eventually(
        async () => (await engine.query(p2.context, 'select count(*) from t')).trim() === '2',
        15_000,
        'pg-c follows pg-b',
      );
    });
  });
});
