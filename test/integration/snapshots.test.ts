/**
 * Snapshots and restore with every part real (docs/volumes.md, Snapshots): a snapshot of a Redis
 * and a PostgreSQL primary is taken with the engine's own means, copied cell to cell over TCP into
 * the second cell's store, and restored into a new service that holds exactly the snapshot's data
 * — not what was written after it — and answers only its own credentials.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { createService, keyOf as serviceKeyOf, psql, redisClient } from '../helpers/volume-support';
import type { ServiceView } from '../../control';
import type { SnapshotView } from '../../control/services/snapshot-records';

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

  const create = (body: Record<string, unknown>): Promise<ServiceView> => createService(cluster, body);
  const keyOf = (service: string) => serviceKeyOf(cluster, service);

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
    const key = await keyOf('snap-redis');
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
    const newKey = await keyOf('snap-redis-copy');
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
    const key = await keyOf('snap-pg');
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
    const newKey = await keyOf('snap-pg-copy');
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

  it("uses the service's stored retention when a snapshot names no keep", async () => {
    const view = await create({ name: 'snap-ret', engine: 'redis' });
    expect(view.snapshot_keep).to.equal(7);
    const bad = await cluster.api<{ error: { field: string } }>('PATCH', '/v3/service_instances/snap-ret', {
      snapshot_keep: 0,
    });
    expect(bad.status).to.equal(400);
    expect(bad.body.error.field).to.equal('snapshot_keep');
    const kind = await cluster.api<{ error: { field: string } }>('PATCH', '/v3/service_instances/snap-ret', {
      snapshot_keep: '2',
    });
    expect(kind.status).to.equal(400);
    expect(kind.body.error.field).to.equal('snapshot_keep');
    const set = await cluster.api<ServiceView>('PATCH', '/v3/service_instances/snap-ret', { snapshot_keep: 2 });
    expect(set.status, JSON.stringify(set.body)).to.equal(200);
    expect(set.body.snapshot_keep).to.equal(2);
    // The setting does not change the disk sync it was not asked to change.
    expect(set.body.disk_sync).to.equal(view.disk_sync);

    const taken: SnapshotView[] = [];
    for (let k = 0; k < 3; k++) taken.push(await snapshot('snap-ret'));
    const listed = (await cluster.api<{ resources: SnapshotView[] }>('GET', '/v3/snapshots?service=snap-ret')).body;
    expect(listed.resources.map((s) => s.id).sort()).to.deep.equal([taken[1].id, taken[2].id].sort());
    // A request's own keep still wins over the stored setting.
    const last = await snapshot('snap-ret', { keep: 1 });
    const after = (await cluster.api<{ resources: SnapshotView[] }>('GET', '/v3/snapshots?service=snap-ret')).body;
    expect(after.resources.map((s) => s.id)).to.deep.equal([last.id]);
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
