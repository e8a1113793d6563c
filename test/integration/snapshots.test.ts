/**
 * Snapshots and restore with every part real (docs/volumes.md, Snapshots): a snapshot of a Redis
 * and a PostgreSQL primary is taken with the engine's own means, copied cell to cell over TCP into
 * the second cell's store, and restored into a new service that holds exactly the snapshot's data
 * — not what was written after it — and answers only its own credentials.
 */
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';
import { eventually } from '../helpers/tcp-client';
import type { ServiceView } from '../../control';
import type { SnapshotView } from '../../control/services/snapshot-records';

const PSQL = '/usr/lib/postgresql/15/bin/psql';

function psql(port: number, auth: ServiceKeyAuth, sql: string): Promise<string> {
  return new Promise((resolve) => {
    const env = { PATH: process.env.PATH ?? '', PGCONNECT_TIMEOUT: '5', PGPASSWORD: auth.password };
    execFile(
      PSQL,
      ['-h', '127.0.0.1', '-p', String(port), '-U', auth.username, '-d', 'postgres', '-w', '-XAtq', '-c', sql],
      { env, timeout: 30_000 },
      (err, stdout, stderr) => resolve(err ? `ERROR ${stderr || err.message}` : stdout.trim()),
    );
  });
}

function redisClient(port: number, auth: ServiceKeyAuth): Redis {
  const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null, ...auth });
  client.on('error', () => undefined);
  return client;
}

describe('snapshots', function () {
  this.timeout(300_000);
  let cluster: ServiceCluster;
  const clients: Redis[] = [];

  before(async () => {
    cluster = await startServiceCluster({ cells: 2 });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  const create = async (body: Record<string, unknown>): Promise<ServiceView> => {
    const res = await cluster.api('POST', '/v3/service_instances', { replicas: 0, ...body });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    return cluster.waitForService(body.name as string, 120_000);
  };

  /** A key the engine accepts (PostgreSQL applies roles a moment after the API stored them). */
  const keyOf = async (service: string, engine: string): Promise<ServiceKeyAuth> => {
    const key = await serviceKey(cluster.api, service).catch(async () => {
      const res = await cluster.api<ServiceKeyAuth>('GET', `/v3/service_instances/${service}/keys/test`);
      expect(res.status).to.equal(200);
      return { username: res.body.username, password: res.body.password };
    });
    const view = (await cluster.api<ServiceView>('GET', `/v3/service_instances/${service}`)).body;
    if (engine === 'postgres')
      await eventually(async () => (await psql(view.port, key, 'select 1')) === '1', 30_000, `key of ${service}`);
    return key;
  };

  const snapshot = async (service: string, body: unknown = {}): Promise<SnapshotView> => {
    const res = await cluster.api<SnapshotView>('POST', `/v3/service_instances/${service}/actions/snapshot`, body);
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    return res.body;
  };

  const restore = async (id: string, name: string): Promise<ServiceView> => {
    const res = await cluster.api('POST', `/v3/snapshots/${id}/actions/restore`, { name });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    return cluster.waitForService(name, 120_000);
  };

  /** The snapshot's directory in a cell's store, as the cell keeps it. */
  const storedOn = async (cell: string, id: string): Promise<boolean> =>
    (await readdir(path.join(cluster.dataDir, cell, 'snapshots')).catch(() => [] as string[])).includes(id);

  it('redis: a restore holds exactly the snapshot, copied to the second cell, with its own credentials', async () => {
    const source = await create({ name: 'snap-redis', engine: 'redis' });
    const key = await keyOf('snap-redis', 'redis');
    const a = redisClient(source.port, key);
    clients.push(a);
    for (let i = 0; i < 200; i++) await a.set(`k${i}`, `v${i}`);

    const snap = await snapshot('snap-redis');
    expect(snap).to.include({ service: 'snap-redis', engine: 'redis', instance: 'snap-redis-0' });
    expect(snap.bytes).to.be.greaterThan(0);
    expect(snap.cells).to.have.length(2);
    for (const cell of snap.cells) expect(await storedOn(cell, snap.id), cell).to.equal(true);

    // Written after the snapshot: none of it may appear in the restore.
    for (let i = 200; i < 300; i++) await a.set(`k${i}`, `v${i}`);
    await a.set('k0', 'changed');
    await a.del('k1');

    const restored = await restore(snap.id, 'snap-redis-copy');
    expect(restored.engine).to.equal('redis');
    expect(restored.port).to.not.equal(source.port);
    const newKey = await keyOf('snap-redis-copy', 'redis');
    const b = redisClient(restored.port, newKey);
    clients.push(b);
    const keys = (await b.keys('k*')).sort();
    expect(keys).to.have.length(200);
    expect(await b.get('k0')).to.equal('v0');
    expect(await b.get('k1')).to.equal('v1');
    expect(await b.get('k250')).to.equal(null);
    // The new service is its own: it writes, and the source's key does not open it.
    expect(await b.set('new', '1')).to.equal('OK');
    expect(await a.get('new')).to.equal(null);
    if (key.password !== newKey.password) {
      const stale = redisClient(restored.port, key);
      clients.push(stale);
      expect(await stale.ping().catch((err: Error) => err.message)).to.match(/WRONGPASS|NOAUTH|invalid/i);
    }

    const listed = (await cluster.api<{ resources: SnapshotView[] }>('GET', '/v3/snapshots?service=snap-redis')).body;
    expect(listed.resources.map((s) => s.id)).to.deep.equal([snap.id]);
    const events = (
      await cluster.api<{ resources: Array<{ type: string }> }>('GET', '/v3/service_instances/snap-redis/events')
    ).body.resources.map((e) => e.type);
    expect(events).to.include.members(['snapshot-created', 'snapshot-copied']);
  });

  it('postgres: a restore holds exactly the snapshot and refuses the source service key', async () => {
    const source = await create({ name: 'snap-pg', engine: 'postgres' });
    const key = await keyOf('snap-pg', 'postgres');
    expect(
      await psql(
        source.port,
        key,
        "create table t (id int primary key, v text); insert into t select g, 'v' || g from generate_series(1, 1000) g",
      ),
    ).to.not.match(/ERROR/);

    const snap = await snapshot('snap-pg');
    expect(snap.cells).to.have.length(2);

    expect(
      await psql(
        source.port,
        key,
        "insert into t select g, 'late' from generate_series(1001, 2000) g; update t set v = 'changed' where id = 1",
      ),
    ).to.not.match(/ERROR/);
    expect(await psql(source.port, key, 'select count(*) from t')).to.equal('2000');

    const restored = await restore(snap.id, 'snap-pg-copy');
    const newKey = await keyOf('snap-pg-copy', 'postgres');
    expect(await psql(restored.port, newKey, 'select count(*), max(id) from t')).to.equal('1000|1000');
    expect(await psql(restored.port, newKey, 'select v from t where id = 1')).to.equal('v1');
    expect(await psql(restored.port, newKey, "insert into t values (5000, 'mine')")).to.not.match(/ERROR/);
    expect(await psql(source.port, key, 'select count(*) from t where id = 5000')).to.equal('0');
    if (key.password !== newKey.password)
      expect(await psql(restored.port, key, 'select 1')).to.match(/ERROR.*(password|authentication)/);
  });

  it('keeps the newest snapshots only, and deletes one from every cell', async () => {
    await create({ name: 'snap-keep', engine: 'redis' });
    const first = await snapshot('snap-keep');
    const second = await snapshot('snap-keep', { keep: 1 });
    const listed = (await cluster.api<{ resources: SnapshotView[] }>('GET', '/v3/snapshots?service=snap-keep')).body;
    expect(listed.resources.map((s) => s.id)).to.deep.equal([second.id]);
    for (const cell of first.cells) expect(await storedOn(cell, first.id), cell).to.equal(false);

    const del = await cluster.api<SnapshotView>('DELETE', `/v3/snapshots/${second.id}`);
    expect(del.status).to.equal(200);
    for (const cell of second.cells) expect(await storedOn(cell, second.id), cell).to.equal(false);
    expect((await cluster.api('GET', `/v3/snapshots/${second.id}`)).status).to.equal(404);
  });

  it('refuses bad input naming the field, before acting', async () => {
    const keep = await cluster.api<{ error: { field: string } }>(
      'POST',
      '/v3/service_instances/snap-keep/actions/snapshot',
      {
        keep: 0,
      },
    );
    expect(keep.status).to.equal(400);
    expect(keep.body.error.field).to.equal('keep');
    expect((await cluster.api('POST', '/v3/service_instances/nope/actions/snapshot', {})).status).to.equal(404);
    const snap = await snapshot('snap-keep');
    const noName = await cluster.api<{ error: { field: string } }>(
      'POST',
      `/v3/snapshots/${snap.id}/actions/restore`,
      {},
    );
    expect(noName.status).to.equal(400);
    expect(noName.body.error.field).to.equal('name');
    const taken = await cluster.api('POST', `/v3/snapshots/${snap.id}/actions/restore`, { name: 'snap-keep' });
    expect(taken.status).to.equal(409);
    const engine = await cluster.api<{ error: { field: string } }>('POST', `/v3/snapshots/${snap.id}/actions/restore`, {
      name: 'x1',
      engine: 'postgres',
    });
    expect(engine.status).to.equal(400);
    expect((await cluster.api('POST', '/v3/snapshots/missing-1/actions/restore', { name: 'x2' })).status).to.equal(404);
  });
});
