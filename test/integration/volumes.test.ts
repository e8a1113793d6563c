/**
 * Volumes as records, their size limit and disk sync, every part real: cells measure usage with
 * `du`, a full Redis volume refuses writes (OOM) and a full PostgreSQL one makes transactions
 * read-only, while another service on the same cell keeps accepting writes; disk sync is set at
 * creation and changed on a running service without a restart.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey } from '../helpers/service-key';
import { eventually } from '../helpers/tcp-client';
import { createService, keyOf as serviceKeyOf, psql, redisClient } from '../helpers/volume-support';
import type { VolumeView } from '../../control/api/routes-volumes';
import type { CellView } from '../../control/api/routes-cells';
import type { ServiceView } from '../../control';

describe('volumes', function () {
  this.timeout(240_000);
  let cluster: ServiceCluster;
  const clients: Redis[] = [];

  before(async () => {
    cluster = await startServiceCluster({ cells: 1, cellArgs: ['--volume-check-ms', '300'] });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  const volumes = async (service: string): Promise<VolumeView[]> =>
    (await cluster.api<{ resources: VolumeView[] }>('GET', `/v3/volumes?service=${service}`)).body.resources;

  const keyOf = (service: string) => serviceKeyOf(cluster, service);
  const create = (body: Record<string, unknown>): Promise<ServiceView> => createService(cluster, body, 90_000);

  describe('GET /v3/volumes', () => {
    it('needs a token', async () => {
      expect((await cluster.api('GET', '/v3/volumes', undefined, null)).status).to.equal(401);
    });

    it('lists each volume with its measured usage, path and state', async () => {
      await create({ name: 'listed', engine: 'redis', volume: { size_mb: 64 } });
      let vol: VolumeView | undefined;
      await eventually(
        async () => {
          [vol] = await volumes('listed');
          return vol?.used_mb !== null && vol?.used_mb !== undefined;
        },
        15_000,
        'volume measured',
      );
      const v = vol as VolumeView;
      expect(v).to.include({ id: `${v.cell}/listed-0`, service: 'listed', instance: 'listed-0', size_mb: 64 });
      expect(v.state).to.equal('attached');
      expect(v.used_mb).to.be.within(0, 63);
      expect(v.path).to.match(/instances\/listed-0$/);
      // The cell record is rewritten by the cell's next heartbeat after the measurement.
      await eventually(
        async () =>
          typeof (await cluster.api<{ resources: CellView[] }>('GET', '/v3/cells')).body.resources[0]?.disk_used_mb ===
          'number',
        5_000,
        'cell disk use reported',
      );
    });
  });

  describe('size limit', () => {
    it('redis: a full volume refuses writes, serves reads and deletes; a neighbour keeps writing', async () => {
      const full = await create({ name: 'small', engine: 'redis', volume: { size_mb: 2 } });
      const roomy = await create({ name: 'roomy', engine: 'redis', volume: { size_mb: 256 } });
      const a = redisClient(full.port, await serviceKey(cluster.api, 'small'));
      const b = redisClient(roomy.port, await serviceKey(cluster.api, 'roomy'));
      clients.push(a, b);
      const blob = 'x'.repeat(256 * 1024);
      // The cell measures every 300 ms, so on a slow machine the volume can be found full (and
      // writes refused) before all twelve blobs are in: that refusal is the behaviour under test.
      let written = 0;
      for (; written < 12; written++) {
        const refused = await a.set(`k${written}`, blob).then(
          () => false,
          (err: Error) => {
            if (/OOM/.test(err.message)) return true;
            throw err;
          },
        );
        if (refused) break;
      }
      expect(written, 'blobs written before the first refusal').to.be.at.least(2);
      await eventually(async () => (await volumes('small'))[0]?.state === 'full', 15_000, 'volume full');
      await eventually(
        async () =>
          (await cluster.api<{ resources: CellView[] }>('GET', '/v3/cells')).body.resources[0]?.volumes_full.includes(
            'small-0',
          ) ?? false,
        5_000,
        'cell lists the full volume',
      );
      await eventually(
        async () => /OOM/.test(await a.set('more', '1').catch((err: Error) => err.message)),
        10_000,
        'write refused',
      );
      expect((await a.get('k0'))?.length).to.equal(blob.length);
      expect(await a.del('k1')).to.equal(1);
      expect(await b.set('fine', 'yes')).to.equal('OK');
      expect((await volumes('roomy'))[0].state).to.equal('attached');
    });

    it('postgres: a full volume makes transactions read-only; reads still work', async () => {
      // An initdb'd cluster is tens of MB: a 1 MB volume is full at its first measurement.
      const view = await create({ name: 'tinypg', engine: 'postgres', volume: { size_mb: 1 } });
      const key = await keyOf('tinypg');
      await eventually(async () => (await volumes('tinypg'))[0]?.state === 'full', 20_000, 'volume full');
      await eventually(
        async () => /read-only transaction/.test(await psql(view.port, key, 'create table t (x int)')),
        10_000,
        'write refused',
      );
      expect(await psql(view.port, key, 'select 41 + 1')).to.equal('42');
    });
  });

  describe('disk sync', () => {
    const confOf = async (service: string, file: string): Promise<string> => {
      const [vol] = await volumes(service);
      return readFile(path.join(vol.path as string, 'data', file), 'utf8');
    };

    it('redis: set at creation, shown in the view, changed live without a restart', async () => {
      const view = await create({ name: 'synced', engine: 'redis', disk_sync: 'off' });
      expect(view.disk_sync).to.equal('off');
      expect(await confOf('synced', 'redis.conf')).to.match(/^appendfsync no$/m);
      const app = redisClient(view.port, await serviceKey(cluster.api, 'synced'));
      clients.push(app);
      await app.set('before', '1');
      const res = await cluster.api<ServiceView>('PATCH', '/v3/service_instances/synced', { disk_sync: 'always' });
      expect(res.status, JSON.stringify(res.body)).to.equal(200);
      expect(res.body.disk_sync).to.equal('always');
      await eventually(
        async () => /^appendfsync always$/m.test(await confOf('synced', 'redis.conf')),
        10_000,
        'appendfsync always',
      );
      // Same connection, same process: no restart.
      expect(await app.get('before')).to.equal('1');
      const after = (await cluster.api<ServiceView>('GET', '/v3/service_instances/synced')).body;
      expect(after.instances[0].state).to.equal('running');
    });

    it('postgres: interval is synchronous_commit off; off also turns fsync off, live', async () => {
      const view = await create({ name: 'pgsync', engine: 'postgres', disk_sync: 'interval' });
      expect(view.disk_sync).to.equal('interval');
      const key = await keyOf('pgsync');
      expect(await psql(view.port, key, 'show synchronous_commit')).to.equal('off');
      expect(await psql(view.port, key, 'show fsync')).to.equal('on');
      expect((await cluster.api('PATCH', '/v3/service_instances/pgsync', { disk_sync: 'off' })).status).to.equal(200);
      await eventually(async () => (await psql(view.port, key, 'show fsync')) === 'off', 10_000, 'fsync off');
    });

    it('refuses an unknown mode, naming the field', async () => {
      const bad = await cluster.api<{ error: { field: string } }>('PATCH', '/v3/service_instances/synced', {
        disk_sync: 'sometimes',
      });
      expect(bad.status).to.equal(400);
      expect(bad.body.error.field).to.equal('disk_sync');
      const create400 = await cluster.api<{ error: { field: string } }>('POST', '/v3/service_instances', {
        name: 'x',
        engine: 'redis',
        disk_sync: 'never',
      });
      expect(create400.status).to.equal(400);
      expect(create400.body.error.field).to.equal('disk_sync');
      expect((await cluster.api('PATCH', '/v3/service_instances/nope', { disk_sync: 'off' })).status).to.equal(404);
    });
  });
});
