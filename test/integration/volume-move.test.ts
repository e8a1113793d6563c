/**
 * Moving a volume cell to cell with every part real (docs/volumes.md, Moving a volume): a Redis
 * and a PostgreSQL primary holding about 20 MB (smaller than the 200 MB of the benchmark, so the
 * suite stays short on a loaded machine) move while a writer runs through the router; every
 * acknowledged write is there afterwards, the router port is the same, and the source volume is
 * gone only once the target serves. A target cell killed during the copy leaves the source
 * serving with its data, and a retry succeeds.
 */
import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';
import { eventually } from '../helpers/tcp-client';
import type { ServiceView } from '../../control';
import type { MoveView } from '../../control/services/volume-mover';

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

/** Connected before it is returned: with no offline queue, a command before `ready` fails. */
async function redisClient(port: number, auth: ServiceKeyAuth): Promise<Redis> {
  const client = new Redis({
    port,
    host: '127.0.0.1',
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => 50,
    ...auth,
  });
  client.on('error', () => undefined);
  await eventually(async () => client.status === 'ready', 30_000, `redis on ${port} ready`);
  return client;
}

const exists = (p: string): Promise<boolean> =>
  access(p).then(
    () => true,
    () => false,
  );

describe('volume move', function () {
  this.timeout(600_000);
  let cluster: ServiceCluster;
  const clients: Redis[] = [];

  before(async () => {
    cluster = await startServiceCluster({ cells: 3 });
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

  const keyOf = async (service: string, engine: string): Promise<ServiceKeyAuth> => {
    const key = await serviceKey(cluster.api, service).catch(async () => {
      const res = await cluster.api<ServiceKeyAuth>('GET', `/v3/service_instances/${service}/keys/test`);
      return { username: res.body.username, password: res.body.password };
    });
    const view = (await cluster.api<ServiceView>('GET', `/v3/service_instances/${service}`)).body;
    if (engine === 'postgres')
      await eventually(async () => (await psql(view.port, key, 'select 1')) === '1', 30_000, `key of ${service}`);
    return key;
  };

  /** A cell holding no instance of the service. */
  const freeCell = (view: ServiceView): string => {
    const used = new Set(view.instances.map((i) => i.cell));
    const cell = cluster.cells.find((c) => !used.has(c.name));
    if (!cell) throw new Error('no free cell');
    return cell.name;
  };

  const startMove = async (service: string, to: string, instance?: string): Promise<MoveView> => {
    const res = await cluster.api<MoveView>('POST', `/v3/service_instances/${service}/actions/move`, {
      to,
      ...(instance ? { instance } : {}),
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(202);
    return res.body;
  };

  const finished = async (id: string, timeoutMs = 240_000): Promise<MoveView> => {
    let last: MoveView | undefined;
    await eventually(
      async () => {
        last = (await cluster.api<MoveView>('GET', `/v3/moves/${id}`)).body;
        return last.state === 'done' || last.state === 'failed';
      },
      timeoutMs,
      `move ${id} finished`,
    );
    return last as MoveView;
  };

  const volumeDir = (cell: string, instance: string): string => path.join(cluster.dataDir, cell, 'instances', instance);

  it('redis: moves a primary under writes, keeps every acknowledged write and the port', async () => {
    const before = await create({ name: 'mv-redis', engine: 'redis', replicas: 1 });
    const key = await keyOf('mv-redis', 'redis');
    const loader = await redisClient(before.port, key);
    clients.push(loader);
    const blob = 'x'.repeat(100 * 1024);
    for (let i = 0; i < 200; i++) await loader.set(`blob${i}`, blob);
    const primary = before.instances.find((i) => i.role === 'primary');
    if (!primary) throw new Error('no primary');

    // The writer: one write at a time through the router; a write counts once it is answered OK.
    const writer = await redisClient(before.port, key);
    clients.push(writer);
    const acked: number[] = [];
    let failures = 0;
    let writing = true;
    const loop = (async () => {
      for (let n = 0; writing; n++) {
        const ok = await writer.set(`w${n}`, String(n)).then(
          (r) => r === 'OK',
          () => false,
        );
        if (ok) acked.push(n);
        else {
          failures += 1;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    })();

    const to = freeCell(before);
    const move = await startMove('mv-redis', to);
    expect(move).to.include({ instance: primary.id, from: primary.cell, to, state: 'copying', role: 'primary' });
    const done = await finished(move.id);
    expect(done.state, done.error ?? '').to.equal('done');
    expect(done.bytes).to.be.greaterThan(15 * 1024 * 1024);
    expect(done.write_window_ms).to.be.a('number');
    // Writes go on through the same port to the moved primary.
    await eventually(
      async () => acked.length > 0 && (await writer.set('after', '1').catch(() => 'no')) === 'OK',
      60_000,
      'writes after the move',
    );
    writing = false;
    await loop;

    const after = await cluster.waitForService('mv-redis', 120_000);
    expect(after.port).to.equal(before.port);
    const moved = after.instances.find((i) => i.id === primary.id);
    expect(moved).to.include({ cell: to, role: 'primary', state: 'running' });
    expect(moved?.epoch).to.be.greaterThan(primary.epoch);
    expect(await exists(volumeDir(primary.cell, primary.id)), 'source volume removed').to.equal(false);
    expect(await exists(volumeDir(to, primary.id))).to.equal(true);

    const reader = await redisClient(after.port, key);
    clients.push(reader);
    const values = await reader.mget(...acked.map((n) => `w${n}`));
    const missing = acked.filter((n, k) => values[k] !== String(n));
    expect(missing, `acknowledged writes missing (of ${acked.length}, ${failures} failed attempts)`).to.deep.equal([]);
    expect((await reader.get('blob199'))?.length).to.equal(blob.length);
    // The replica follows the moved primary.
    const replica = after.instances.find((i) => i.role === 'replica');
    expect(replica?.state).to.equal('running');
    const events = (
      await cluster.api<{ resources: Array<{ type: string }> }>('GET', '/v3/service_instances/mv-redis/events')
    ).body.resources.map((e) => e.type);
    expect(events).to.include.members(['volume-move-started', 'volume-moved']);
  });

  it('postgres: moves a primary under writes, keeps every committed row and the port', async () => {
    const before = await create({ name: 'mv-pg', engine: 'postgres' });
    const key = await keyOf('mv-pg', 'postgres');
    expect(
      await psql(
        before.port,
        key,
        'create table blob (id int primary key, pad text); insert into blob select g, repeat(md5(g::text), 600) from generate_series(1, 1000) g; create table w (n int primary key)',
      ),
    ).to.not.match(/ERROR/);
    const primary = before.instances[0];
    const acked: number[] = [];
    let writing = true;
    const loop = (async () => {
      for (let n = 0; writing; n++) {
        const out = await psql(before.port, key, `insert into w values (${n})`);
        if (!out.startsWith('ERROR')) acked.push(n);
        else await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await eventually(async () => acked.length >= 3, 60_000, 'writer running');
    const to = freeCell(before);
    const move = await startMove('mv-pg', to);
    const done = await finished(move.id);
    expect(done.state, done.error ?? '').to.equal('done');
    await eventually(async () => (await psql(before.port, key, 'select 1')) === '1', 60_000, 'served after the move');
    const count = acked.length;
    await eventually(async () => acked.length > count, 60_000, 'writes after the move');
    writing = false;
    await loop;

    const after = await cluster.waitForService('mv-pg', 120_000);
    expect(after.port).to.equal(before.port);
    expect(after.instances[0]).to.include({ id: primary.id, cell: to, role: 'primary', state: 'running' });
    expect(await exists(volumeDir(primary.cell, primary.id)), 'source volume removed').to.equal(false);
    const rows = new Set((await psql(after.port, key, 'select n from w')).split('\n').filter(Boolean).map(Number));
    expect(
      acked.filter((n) => !rows.has(n)),
      'committed rows missing',
    ).to.deep.equal([]);
    expect(await psql(after.port, key, 'select count(*) from blob')).to.equal('1000');
  });

  it('a target cell killed during the copy leaves the source serving; a retry succeeds', async () => {
    const before = await create({ name: 'mv-kill', engine: 'redis' });
    const key = await keyOf('mv-kill', 'redis');
    const client = await redisClient(before.port, key);
    clients.push(client);
    const blob = 'y'.repeat(256 * 1024);
    for (let i = 0; i < 160; i++) await client.set(`blob${i}`, blob);
    await client.set('marker', 'before');
    const source = before.instances[0];
    const to = freeCell(before);
    const target = cluster.cells.find((c) => c.name === to);
    if (!target) throw new Error('no target');

    const move = await startMove('mv-kill', to);
    // Killed as soon as bytes arrive (or shortly after the start on a fast machine).
    const deadline = Date.now() + 2_000;
    for (;;) {
      const now = (await cluster.api<MoveView>('GET', `/v3/moves/${move.id}`)).body;
      if (now.bytes > 0 || Date.now() > deadline || now.state !== 'copying') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    target.proc.child.kill('SIGKILL');
    const failed = await finished(move.id);
    expect(failed.state).to.equal('failed');
    expect(failed.error).to.match(/died|copy|transfer|cell/i);

    // The source kept serving: same cell, writes and reads through the router, data intact.
    const view = await cluster.waitForService('mv-kill', 60_000);
    expect(view.instances[0]).to.include({ id: source.id, cell: source.cell, state: 'running' });
    expect(await client.set('marker', 'during')).to.equal('OK');
    expect((await client.get('blob159'))?.length).to.equal(blob.length);

    // The cell comes back (same name and data directory) and the retry resumes and completes.
    cluster.cells.splice(cluster.cells.indexOf(target), 1);
    await cluster.startCell(to, target.zone);
    // The operator retries once the source reports running again (it is, or restarts after a
    // failure in phase 2); a refusal says why.
    let retry: MoveView | undefined;
    let refusal = '';
    await eventually(
      async () => {
        const res = await cluster.api<MoveView>('POST', '/v3/service_instances/mv-kill/actions/move', { to });
        if (res.status === 202) retry = res.body;
        else refusal = JSON.stringify(res.body);
        return res.status === 202;
      },
      60_000,
      `move retried (${refusal})`,
    );
    if (!retry) throw new Error('no retry');
    const done = await finished(retry.id);
    expect(done.state, done.error ?? '').to.equal('done');
    const after = await cluster.waitForService('mv-kill', 120_000);
    expect(after.port).to.equal(before.port);
    expect(after.instances[0].cell).to.equal(to);
    await eventually(async () => (await client.get('marker').catch(() => null)) === 'during', 60_000, 'data moved');
    expect((await client.get('blob0'))?.length).to.equal(blob.length);
  });

  it('refuses bad requests naming the field', async () => {
    const view = await cluster.waitForService('mv-kill', 60_000);
    const cases: Array<[unknown, number, string]> = [
      [{}, 400, 'to'],
      [{ to: 'nowhere' }, 400, 'to'],
      [{ to: view.instances[0].cell }, 400, 'to'],
      [{ to: freeCell(view), instance: 'mv-kill-99' }, 404, 'instance'],
      [{ to: freeCell(view), extra: 1 }, 400, ''],
    ];
    for (const [body, status, field] of cases) {
      const res = await cluster.api<{ error: { field?: string } }>(
        'POST',
        '/v3/service_instances/mv-kill/actions/move',
        body,
      );
      expect(res.status, JSON.stringify(body)).to.equal(status);
      if (field) expect(res.body.error.field, JSON.stringify(body)).to.equal(field);
    }
    expect((await cluster.api('POST', '/v3/service_instances/none/actions/move', { to: 'cell-1' })).status).to.equal(
      404,
    );
  });
});
