import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { PostgresEngine } from '../../cell/engine-postgres';
import { ErrorCode } from '../../common/errors';
import { fenceLease } from '../../protocol/lease';
import { keyLayout } from '../../protocol/keys';
import { eventually, tempCellDir } from '../helpers/cell-harness';
import { CellDriver, killProcess, spawnCell } from '../helpers/cell-process';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';

describe('sf cell replication and failover orders', function () {
  this.timeout(180_000);
  let state: RedisServerHandle;
  let redis: Redis;
  let driver: CellDriver;
  const dirs: Array<{ dir: string; remove(): Promise<void> }> = [];
  const cells: ChildProcess[] = [];
  const clients: Redis[] = [];

  function client(port: number): Redis {
    const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null });
    c.on('error', () => undefined);
    clients.push(c);
    return c;
  }

  beforeEach(async () => {
    state = await startRedisServer();
    redis = new Redis(state.url);
    driver = new CellDriver(redis);
    for (const [name, range] of [
      ['c1', '22100-22199'],
      ['c2', '22200-22299'],
    ]) {
      const dir = await tempCellDir();
      dirs.push(dir);
      cells.push(spawnCell({ name, redisUrl: state.url, dataDir: dir.dir, portRange: range }));
    }
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    for (const c of cells.splice(0)) await killProcess(c);
    driver.killInstances();
    redis.disconnect();
    await state.stop();
    for (const d of dirs.splice(0)) await d.remove();
  });

  it('redis: replica follows, fence + promote + re-join the old primary as a replica', async () => {
    const t0 = Date.now();
    await driver.desire('c1', { instanceId: 'kv-0', service: 'kv', durability: 'sync', replicas: 1 });
    const p = await driver.waitState('c1', 'kv-0', 'running');
    expect(await client(p.port as number).ping()).to.equal('PONG');
    console.log(`      redis primary via sf cell: desired to first query ${Date.now() - t0} ms`);

    await driver.desire('c2', {
      instanceId: 'kv-1',
      service: 'kv',
      role: 'replica',
      durability: 'sync',
      replicas: 1,
      replicaOf: { host: p.host, port: p.port as number },
    });
    const r = await driver.waitState('c2', 'kv-1', 'running');
    const primary = client(p.port as number);
    await eventually(async () => (await primary.set('k', 'v')) === 'OK', 10_000, 'sync write accepted');
    await eventually(async () => (await client(r.port as number).get('k')) === 'v', 10_000, 'replica read');

    const positions = await Promise.all([
      driver.order('c1', { type: 'position', instanceId: 'kv-0' }),
      driver.order('c2', { type: 'position', instanceId: 'kv-1' }),
    ]);
    expect(positions.map((x) => x.data?.role)).to.deep.equal(['primary', 'replica']);

    // Failover as control does it: shoot the old primary, then promote with a higher epoch.
    expect((await driver.order('c1', { type: 'fence', instanceId: 'kv-0' })).ok).to.equal(true);
    const promoted = await driver.order('c2', { type: 'promote', instanceId: 'kv-1', epoch: 2 });
    expect(promoted.ok, JSON.stringify(promoted.error)).to.equal(true);
    const after = await driver.actual('c2', 'kv-1');
    expect(after).to.include({ role: 'primary', epoch: 2, state: 'running' });

    // Control raised kv-0's epoch floor when it fenced it: kv-0's own cell only ever saw epoch 1,
    // yet it refuses to bring it back as a primary.
    await fenceLease(redis, keyLayout(), 'kv-0', 2);
    await driver.desire('c1', {
      instanceId: 'kv-0',
      service: 'kv',
      role: 'primary',
      epoch: 1,
      generation: 1,
      durability: 'sync',
      replicas: 1,
    });
    const refused = await driver.waitState('c1', 'kv-0', 'failed');
    expect(refused.lastError?.code).to.equal(ErrorCode.StaleEpoch);

    // It comes back as a replica of the new primary instead (a new generation).
    await driver.desire('c1', {
      instanceId: 'kv-0',
      service: 'kv',
      role: 'replica',
      epoch: 2,
      generation: 2,
      durability: 'sync',
      replicas: 1,
      replicaOf: { host: r.host, port: r.port as number },
    });
    const rejoined = await driver.waitState('c1', 'kv-0', 'running');
    expect(rejoined.role).to.equal('replica');
    const newPrimary = client(r.port as number);
    await eventually(async () => (await newPrimary.set('k2', 'v2')) === 'OK', 10_000, 'write on the new primary');
    await eventually(
      async () => (await client(rejoined.port as number).get('k2')) === 'v2',
      10_000,
      'old primary follows',
    );
    expect(await client(rejoined.port as number).get('k')).to.equal('v');

    // Repoint: the old primary follows the new one explicitly (idempotent here).
    const repoint = await driver.order('c1', {
      type: 'repoint',
      instanceId: 'kv-0',
      primary: { host: r.host, port: r.port },
    });
    expect(repoint.ok).to.equal(true);
    const stale = await driver.order('c1', { type: 'promote', instanceId: 'kv-0', epoch: 1 });
    expect(stale.error?.code).to.equal(ErrorCode.StaleEpoch);
  });

  it("relocation: a stopped instance's volume is copied to another cell and starts there with its data", async () => {
    await driver.desire('c1', { instanceId: 'mv-0', service: 'mv', durability: 'sync' });
    const before = await driver.waitState('c1', 'mv-0', 'running');
    await client(before.port as number).set('moved', 'yes');
    await driver.undesire('c1', 'mv-0');
    await driver.waitState('c1', 'mv-0', 'stopped');
    const copy = await driver.order('c1', {
      type: 'copy-volume',
      instanceId: 'mv-0',
      destination: path.join(dirs[1].dir, 'instances'),
    });
    expect(copy.ok, JSON.stringify(copy.error)).to.equal(true);

    await driver.desire('c2', { instanceId: 'mv-0', service: 'mv', durability: 'sync' });
    const after = await driver.waitState('c2', 'mv-0', 'running');
    expect(after.port).to.be.within(22200, 22299);
    expect(await client(after.port as number).get('moved')).to.equal('yes');
    expect((await driver.order('c1', { type: 'delete-volume', instanceId: 'mv-0' })).ok).to.equal(true);
  });

  it('postgres: streaming replica via pg_basebackup through two cells, promote by order, LSN reported', async () => {
    const engine = new PostgresEngine();
    const t0 = Date.now();
    await driver.desire('c1', {
      instanceId: 'db-0',
      service: 'db',
      engine: 'postgres',
      durability: 'sync',
      replicas: 1,
    });
    const p = await driver.waitState('c1', 'db-0', 'running', 60_000);
    const ctx = (port: number) => ({
      spec: {} as never,
      dataDir: '',
      volumeDir: '',
      port,
      listenHost: '127.0.0.1',
      advertiseHost: '127.0.0.1',
    });
    expect((await engine.query(ctx(p.port as number), 'select 1')).trim()).to.equal('1');
    console.log(`      postgres primary via sf cell: desired to first query ${Date.now() - t0} ms`);

    const t1 = Date.now();
    await driver.desire('c2', {
      instanceId: 'db-1',
      service: 'db',
      engine: 'postgres',
      role: 'replica',
      durability: 'sync',
      replicas: 1,
      replicaOf: { host: p.host, port: p.port as number },
    });
    const r = await driver.waitState('c2', 'db-1', 'running', 60_000);
    console.log(`      postgres replica via sf cell: desired to running ${Date.now() - t1} ms`);
    await engine.query(ctx(p.port as number), "create table t(v text); insert into t values ('x')");
    expect((await engine.query(ctx(r.port as number), 'select v from t')).trim()).to.equal('x');

    const lsn = await driver.order('c2', { type: 'position', instanceId: 'db-1' });
    expect(lsn.data?.role).to.equal('replica');
    expect(String(lsn.data?.position)).to.match(/^[0-9A-F]+\/[0-9A-F]+$/);

    expect((await driver.order('c1', { type: 'fence', instanceId: 'db-0' })).ok).to.equal(true);
    const promoted = await driver.order('c2', { type: 'promote', instanceId: 'db-1', epoch: 2 }, 90_000);
    expect(promoted.ok, JSON.stringify(promoted.error)).to.equal(true);
    expect(promoted.data?.role).to.equal('primary');
    await engine.query(ctx(r.port as number), "set synchronous_commit = local; insert into t values ('y')");
    expect((await engine.query(ctx(r.port as number), 'select count(*) from t')).trim()).to.equal('2');
    expect(
      (await driver.order('c2', { type: 'promote', instanceId: 'db-1', epoch: 2 })).ok,
      'promote is idempotent',
    ).to.equal(true);

    // The fenced old primary comes back as a replica of the new one: rewound, then streaming.
    await driver.desire('c1', {
      instanceId: 'db-0',
      service: 'db',
      engine: 'postgres',
      role: 'replica',
      epoch: 2,
      generation: 1,
      durability: 'sync',
      replicas: 1,
      replicaOf: { host: r.host, port: r.port as number },
    });
    const rejoined = await driver.waitState('c1', 'db-0', 'running', 90_000);
    expect(rejoined.lastError).to.equal(null);
    await engine.query(ctx(r.port as number), "insert into t values ('z')");
    await eventually(
      async () => (await engine.query(ctx(rejoined.port as number), 'select count(*) from t')).trim() === '3',
      15_000,
      'old primary follows',
    );
    expect((await driver.order('c1', { type: 'position', instanceId: 'db-0' })).data?.role).to.equal('replica');
  });
});
