/**
 * Moving a volume cell to cell with every part real (docs/volumes.md, Moving a volume). By
 * catch-up (the default for Redis and PostgreSQL): a primary holding about 20 MB (smaller than
 * the 200 MB of the benchmark, so the suite stays short on a loaded machine) moves while a writer
 * runs through the router; every acknowledged write is there afterwards, the router port is the
 * same, and the source volume is gone only once the target serves. A replica moves without
 * touching the primary. A source engine killed while the new replica catches up: failover runs
 * as usual and the move leaves nothing behind. By copy: a target cell killed during the copy
 * leaves the source serving with its data, and a retry succeeds.
 */
import { execFile } from 'node:child_process';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { enginePid } from '../helpers/failover-support';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { eventually } from '../helpers/tcp-client';
import {
  createService,
  exists,
  keyOf,
  psql,
  reconnectingRedisClient as redisClient,
  volumeDir as volumeDirOf,
} from '../helpers/volume-support';
import type { ServiceView } from '../../control';
import type { MoveView } from '../../control/services/volume-mover';
import { keyLayout, type ActualInstance, type CellRecord } from '../../protocol';

const KEYS = keyLayout();

/** A writer through the router, one SET at a time; a write counts once it is answered OK. */
function redisWriter(client: Redis): { acked: number[]; failures: () => number; stop: () => Promise<void> } {
  const acked: number[] = [];
  let failures = 0;
  let writing = true;
  const loop = (async () => {
    for (let n = 0; writing; n++) {
      const ok = await client.set(`w${n}`, String(n)).then(
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
  return {
    acked,
    failures: () => failures,
    stop: async () => {
      writing = false;
      await loop;
    },
  };
}

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

  const create = (body: Record<string, unknown>): Promise<ServiceView> => createService(cluster, body);
  const client = async (port: number, service: string): Promise<Redis> => {
    const c = await redisClient(port, await keyOf(cluster, service));
    clients.push(c);
    return c;
  };
  const volumeDir = (cell: string, instance: string): string => volumeDirOf(cluster, cell, instance);

  /** A cell holding no instance of the service. */
  const freeCell = (view: ServiceView): string => {
    const used = new Set(view.instances.map((i) => i.cell));
    const cell = cluster.cells.find((c) => !used.has(c.name));
    if (!cell) throw new Error('no free cell');
    return cell.name;
  };

  const startMove = async (service: string, to: string, extra: Record<string, unknown> = {}): Promise<MoveView> => {
    const post = (): Promise<{ status: number; body: MoveView }> =>
      cluster.api<MoveView>('POST', `/v3/service_instances/${service}/actions/move`, { to, ...extra });
    let res = await post();
    // The harness's cells hold a 1 s registration: on a loaded machine one can look dead for a
    // moment, and the move is rightly refused then. Asked again once it is back; any other
    // refusal is the answer.
    const deadline = Date.now() + 60_000;
    while (res.status !== 202 && /not alive|no live cell/.test(JSON.stringify(res.body)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      res = await post();
    }
    expect(res.status, JSON.stringify(res.body)).to.equal(202);
    return res.body;
  };

  const finished = async (id: string, timeoutMs = 240_000): Promise<MoveView> => {
    let last: MoveView | undefined;
    try {
      await eventually(
        async () => {
          last = (await cluster.api<MoveView>('GET', `/v3/moves/${id}`)).body;
          return last.state === 'done' || last.state === 'failed';
        },
        timeoutMs,
        `move ${id} finished`,
      );
    } catch (err) {
      // Where a slow move stood when the wait gave up says which phase took the time.
      throw new Error(`${(err as Error).message}; last seen: ${JSON.stringify(last)}`, { cause: err });
    }
    return last as MoveView;
  };

  /**
   * The mover deletes the source volume once the target serves; when that order fails, a
   * tombstone has the collector delete it, so the wait covers one collector round.
   */
  const sourceVolumeGone = (cell: string, instance: string): Promise<void> =>
    eventually(
      async () => !(await exists(volumeDir(cell, instance))),
      30_000,
      `volume of ${instance} on ${cell} deleted`,
    );

  /** The service's fencing steps, oldest first, one per line (printed when a move fails). */
  const fencingHistory = async (service: string): Promise<string> =>
    (
      await cluster.api<{ resources: Array<{ step: string; outcome: string; message: string; at: string }> }>(
        'GET',
        `/v3/service_instances/${service}/fencing`,
      )
    ).body.resources
      .reverse()
      .map((h) => `        ${h.at} ${h.step}:${h.outcome} ${h.message}`)
      .join('\n');

  /** The service's events, oldest first, one per line (printed when a move fails). */
  const serviceEvents = async (service: string): Promise<string> =>
    (
      await cluster.api<{ resources: Array<{ type: string; message: string; at: string | number }> }>(
        'GET',
        `/v3/service_instances/${service}/events`,
      )
    ).body.resources
      .slice()
      .reverse()
      .map((e) => `        ${String(e.at)} ${e.type}: ${e.message}`)
      .join('\n');

  const actualOf = async (cell: string, instance: string): Promise<ActualInstance | null> => {
    const text = await cluster.state.hget(KEYS.cell(cell).actual, instance);
    return text ? (JSON.parse(text) as ActualInstance) : null;
  };

  it('redis: moves a primary under writes by catch-up, keeps every acknowledged write and the port', async () => {
    const before = await create({ name: 'mv-redis', engine: 'redis', replicas: 1 });
    const loader = await client(before.port, 'mv-redis');
    const blob = 'x'.repeat(100 * 1024);
    for (let i = 0; i < 200; i++) await loader.set(`blob${i}`, blob);
    const primary = before.instances.find((i) => i.role === 'primary');
    const replica = before.instances.find((i) => i.role === 'replica');
    if (!primary || !replica) throw new Error('no primary or replica');

    const writer = redisWriter(await client(before.port, 'mv-redis'));
    const to = freeCell(before);
    const move = await startMove('mv-redis', to);
    expect(move).to.include({ instance: primary.id, from: primary.cell, to, state: 'copying', role: 'primary' });
    expect(move.method).to.equal('catch-up');
    const done = await finished(move.id);
    expect(done.state, done.error ?? '').to.equal('done');
    expect(done.target_instance).to.not.equal(primary.id);
    expect(done.write_window_ms).to.be.a('number');
    // Writes go on through the same port to the moved primary.
    await eventually(
      async () => writer.acked.length > 0 && (await loader.set('after', '1').catch(() => 'no')) === 'OK',
      60_000,
      'writes after the move',
    );
    await writer.stop();

    const after = await cluster.waitForService('mv-redis', 120_000);
    expect(after.port).to.equal(before.port);
    expect(after.instances.map((i) => i.id).sort()).to.deep.equal([done.target_instance, replica.id].sort());
    const moved = after.instances.find((i) => i.id === done.target_instance);
    expect(moved).to.include({ cell: to, role: 'primary', state: 'running' });
    expect(moved?.epoch).to.be.greaterThan(primary.epoch);
    await sourceVolumeGone(primary.cell, primary.id);
    expect(await exists(volumeDir(to, done.target_instance))).to.equal(true);

    const values = await loader.mget(...writer.acked.map((n) => `w${n}`));
    const missing = writer.acked.filter((n, k) => values[k] !== String(n));
    expect(
      missing,
      `acknowledged writes missing (of ${writer.acked.length}, ${writer.failures()} failed attempts)`,
    ).to.deep.equal([]);
    expect((await loader.get('blob199'))?.length).to.equal(blob.length);
    // The replica follows the moved primary.
    expect(after.instances.find((i) => i.id === replica.id)?.state).to.equal('running');
    await eventually(
      async () => (await actualOf(replica.cell, replica.id))?.streaming === true,
      60_000,
      'replica streaming from the moved primary',
    );
    const events = (
      await cluster.api<{ resources: Array<{ type: string }> }>('GET', '/v3/service_instances/mv-redis/events')
    ).body.resources.map((e) => e.type);
    expect(events).to.include.members(['volume-move-started', 'volume-moved']);
    // The source was paused, not stopped, before the promotion, and retired in the promotion
    // commit rather than restarted as a replica.
    const history = (
      await cluster.api<{ resources: Array<{ step: string; outcome: string; instance_id?: string }> }>(
        'GET',
        '/v3/service_instances/mv-redis/fencing',
      )
    ).body.resources
      .reverse()
      .map((h) => `${h.step}:${h.outcome}`);
    expect(history).to.include.members(['pause:ok', 'promote:ok', 'retire:ok']);
    expect(history.indexOf('pause:ok')).to.be.lessThan(history.indexOf('promote:ok'));
    expect(history.filter((h) => h.startsWith('stop:') || h.startsWith('rejoin:'))).to.deep.equal([]);
  });

  it('redis: moves a replica with --instance without touching the primary', async () => {
    const before = await cluster.waitForService('mv-redis', 60_000);
    const primary = before.instances.find((i) => i.role === 'primary');
    const replica = before.instances.find((i) => i.role === 'replica');
    if (!primary || !replica) throw new Error('no primary or replica');
    const writer = redisWriter(await client(before.port, 'mv-redis'));
    const to = freeCell(before);
    const move = await startMove('mv-redis', to, { instance: replica.id });
    expect(move).to.include({ instance: replica.id, role: 'replica', from: replica.cell, to });
    const done = await finished(move.id);
    expect(done.state, done.error ?? '').to.equal('done');
    expect(done.write_window_ms).to.equal(0);
    await writer.stop();
    // Not one write failed: the primary was never stopped, fenced or switched.
    expect(writer.failures(), 'writes failed during a replica move').to.equal(0);
    expect(writer.acked.length).to.be.greaterThan(0);

    const after = await cluster.waitForService('mv-redis', 120_000);
    const same = after.instances.find((i) => i.role === 'primary');
    expect(same).to.include({ id: primary.id, cell: primary.cell, epoch: primary.epoch, state: 'running' });
    expect(after.instances.map((i) => i.id).sort()).to.deep.equal([primary.id, done.target_instance].sort());
    expect(after.instances.find((i) => i.id === done.target_instance)).to.include({ cell: to, role: 'replica' });
    const actual = await actualOf(to, done.target_instance);
    expect(actual?.streaming, 'new replica streams from the primary').to.equal(true);
    await sourceVolumeGone(replica.cell, replica.id);
  });

  it('postgres: moves a primary under writes by catch-up, keeps every committed row and the port', async () => {
    const before = await create({ name: 'mv-pg', engine: 'postgres' });
    const key = await keyOf(cluster, 'mv-pg');
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
    expect(move.method).to.equal('catch-up');
    const done = await finished(move.id);
    if (done.state !== 'done')
      console.log(
        `      fencing history of mv-pg:\n${await fencingHistory('mv-pg')}\n      events:\n${await serviceEvents('mv-pg')}\n      move steps: ${JSON.stringify(done.steps)}`,
      );
    expect(done.state, done.error ?? '').to.equal('done');
    await eventually(async () => (await psql(before.port, key, 'select 1')) === '1', 60_000, 'served after the move');
    const count = acked.length;
    await eventually(async () => acked.length > count, 60_000, 'writes after the move');
    writing = false;
    await loop;

    const after = await cluster.waitForService('mv-pg', 120_000);
    expect(after.port).to.equal(before.port);
    expect(after.instances).to.have.length(1);
    expect(after.instances[0]).to.include({ id: done.target_instance, cell: to, role: 'primary', state: 'running' });
    await sourceVolumeGone(primary.cell, primary.id);
    const rows = new Set((await psql(after.port, key, 'select n from w')).split('\n').filter(Boolean).map(Number));
    expect(
      acked.filter((n) => !rows.has(n)),
      'committed rows missing',
    ).to.deep.equal([]);
    expect(await psql(after.port, key, 'select count(*) from blob')).to.equal('1000');
    // The source could not pause: it was stopped at once and the target caught up with the
    // position its stop reported, before the promotion.
    const history = (await fencingHistory('mv-pg')).split('\n').map((line) => line.trim().split(' ')[1]);
    expect(history).to.include.members(['pause:skipped', 'stop:ok', 'catch-up:ok', 'promote:ok']);
    expect(history.indexOf('stop:ok')).to.be.lessThan(history.indexOf('catch-up:ok'));
    expect(history.indexOf('catch-up:ok')).to.be.lessThan(history.indexOf('promote:ok'));
  });

  it('a source engine killed during the catch-up: failover as usual, the move leaves nothing behind', async () => {
    const before = await create({ name: 'mv-src', engine: 'redis', replicas: 1, durability: 'sync' });
    const loader = await client(before.port, 'mv-src');
    const blob = 'z'.repeat(256 * 1024);
    for (let i = 0; i < 160; i++) await loader.set(`blob${i}`, blob);
    const primary = before.instances.find((i) => i.role === 'primary');
    const replica = before.instances.find((i) => i.role === 'replica');
    if (!primary || !replica) throw new Error('no primary or replica');
    const writer = redisWriter(await client(before.port, 'mv-src'));
    await eventually(async () => writer.acked.length >= 3, 60_000, 'writer running');

    const to = freeCell(before);
    const move = await startMove('mv-src', to);
    process.kill(await enginePid(cluster, before, primary.id), 'SIGKILL');
    const failed = await finished(move.id);
    expect(failed.state).to.equal('failed');
    expect(failed.error).to.match(/lost|failover|changed|removed|no running primary/);

    // Failover promoted the old replica (never the move's), and the move's replica is gone.
    let view = before;
    await eventually(
      async () => {
        view = (await cluster.api<ServiceView>('GET', '/v3/service_instances/mv-src')).body;
        const p = view.instances.find((i) => i.role === 'primary');
        return view.status === 'running' && p?.id === replica.id && p.state === 'running';
      },
      120_000,
      'failed over to the replica',
    );
    expect(view.instances.map((i) => i.id).sort()).to.deep.equal([primary.id, replica.id].sort());
    expect(view.instances.some((i) => i.cell === to)).to.equal(false);
    await eventually(
      async () => !(await exists(volumeDir(to, failed.target_instance))),
      60_000,
      "the move's replica volume deleted",
    );
    await eventually(
      async () => (await loader.set('after', '1').catch(() => 'no')) === 'OK',
      60_000,
      'writes after the failover',
    );
    await writer.stop();
    // Sync durability: every acknowledged write survived the failover. The read is retried when
    // the connection drops (a route change after the old primary rejoined), never on its answer.
    let values: Array<string | null> = [];
    await eventually(
      async () => {
        values = await loader.mget(...writer.acked.map((n) => `w${n}`)).catch(() => []);
        return values.length === writer.acked.length;
      },
      60_000,
      'acknowledged writes read back',
    );
    expect(
      writer.acked.filter((n, k) => values[k] !== String(n)),
      `acknowledged writes missing (of ${writer.acked.length})`,
    ).to.deep.equal([]);
    let last: string | null = null;
    await eventually(
      async () => (last = await loader.get('blob159').catch(() => null)) !== null,
      60_000,
      'blob read back',
    );
    expect(last ?? '').to.have.length(blob.length);
  });

  it('copy: a target cell killed during the copy leaves the source serving; a retry succeeds', async () => {
    const before = await create({ name: 'mv-kill', engine: 'redis' });
    const c = await client(before.port, 'mv-kill');
    const blob = 'y'.repeat(256 * 1024);
    for (let i = 0; i < 160; i++) await c.set(`blob${i}`, blob);
    await c.set('marker', 'before');
    const source = before.instances[0];
    const to = freeCell(before);
    const target = cluster.cells.find((cell) => cell.name === to);
    if (!target) throw new Error('no target');

    const move = await startMove('mv-kill', to, { method: 'copy' });
    expect(move.method).to.equal('copy');
    // Killed as soon as bytes arrive (or shortly after the start on a fast machine).
    const deadline = Date.now() + 2_000;
    for (;;) {
      const now = (await cluster.api<MoveView>('GET', `/v3/moves/${move.id}`)).body;
      if (now.bytes > 0 || Date.now() > deadline || now.state !== 'copying') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const t0 = Date.now();
    const at = (): string => `+${Date.now() - t0} ms`;
    target.proc.child.kill('SIGKILL');
    const failed = await finished(move.id);
    console.log(`      target cell killed; move failed at ${at()}: ${failed.error}`);
    expect(failed.state).to.equal('failed');
    expect(failed.error).to.match(/died|copy|transfer|cell/i);

    // The source kept serving: same cell, writes and reads through the router, data intact.
    const view = await cluster.waitForService('mv-kill', 60_000);
    expect(view.instances[0]).to.include({ id: source.id, cell: source.cell, state: 'running' });
    expect(await c.set('marker', 'during')).to.equal('OK');
    expect((await c.get('blob159'))?.length).to.equal(blob.length);

    // The cell comes back (same name and data directory) and the retry resumes and completes.
    cluster.cells.splice(cluster.cells.indexOf(target), 1);
    await cluster.startCell(to, target.zone);
    console.log(`      cell ${to} registered again at ${at()}`);
    // The operator retries once the source reports running again (it is, or restarts after a
    // failure in phase 2); a refusal says why.
    let retry: MoveView | undefined;
    let refusal = '';
    await eventually(
      async () => {
        const res = await cluster.api<MoveView>('POST', '/v3/service_instances/mv-kill/actions/move', {
          to,
          method: 'copy',
        });
        if (res.status === 202) retry = res.body;
        else refusal = JSON.stringify(res.body);
        return res.status === 202;
      },
      60_000,
      `move retried (${refusal})`,
    );
    if (!retry) throw new Error('no retry');
    console.log(`      retry accepted at ${at()}`);
    const done = await finished(retry.id);
    console.log(
      `      retry ${done.state} at ${at()}: ${(done.bytes / 1048576).toFixed(1)} MB, writes refused ${done.write_window_ms} ms (steps, ms: ${done.steps.map((st) => `${st.step} ${st.duration_ms}`).join(', ')})`,
    );
    if (process.env.SF_TEST_DUMP_CELLS)
      for (const cell of cluster.cells) console.log(`----- ${cell.name}\n${cell.proc.output().slice(-20000)}`);
    expect(done.state, done.error ?? '').to.equal('done');
    expect(done.bytes).to.be.greaterThan(15 * 1024 * 1024);
    const after = await cluster.waitForService('mv-kill', 120_000);
    expect(after.port).to.equal(before.port);
    expect(after.instances[0]).to.include({ id: source.id, cell: to });
    await eventually(async () => (await c.get('marker').catch(() => null)) === 'during', 60_000, 'data moved');
    expect((await c.get('blob0'))?.length).to.equal(blob.length);
  });

  it('copy: a copy connection cut in the middle is resumed by the mover; the move completes', async function () {
    // `ss -K` closes a socket of another process: it needs root (as the engines' users do here).
    if (process.getuid?.() !== 0) this.skip();
    const before = await create({ name: 'mv-cut', engine: 'redis' });
    const c = await client(before.port, 'mv-cut');
    const blob = 'c'.repeat(256 * 1024);
    for (let i = 0; i < 160; i++) await c.set(`blob${i}`, blob);
    await c.set('marker', 'before');
    const source = before.instances[0];
    const registration = JSON.parse(
      (await cluster.state.get(KEYS.cell(source.cell).registration)) ?? '{}',
    ) as CellRecord;
    const sourcePort = registration.transfer?.port;
    if (!sourcePort) throw new Error(`cell ${source.cell} advertises no transfer port`);
    const to = freeCell(before);

    const move = await startMove('mv-cut', to, { method: 'copy' });
    // The receiving cell's connection to the source's transfer port, closed once (RST) as soon
    // as it exists: what a network blip or a restarted middlebox does to a long copy.
    const cutOnce = (): Promise<boolean> =>
      new Promise((resolve) =>
        execFile('ss', ['-tnK', 'dport', '=', `:${sourcePort}`], (err, out) =>
          resolve(!err && /ESTAB/.test(String(out))),
        ),
      );
    let cut = false;
    for (const deadline = Date.now() + 60_000; !cut && Date.now() < deadline;) {
      cut = await cutOnce();
      const now = (await cluster.api<MoveView>('GET', `/v3/moves/${move.id}`)).body;
      if (now.state === 'done' || now.state === 'failed') break;
    }
    expect(cut, 'a copy connection was cut').to.equal(true);
    const done = await finished(move.id);
    console.log(
      `      after the cut: ${done.state} (steps, ms: ${done.steps.map((st) => `${st.step} ${st.duration_ms}`).join(', ')})`,
    );
    expect(done.state, done.error ?? '').to.equal('done');
    expect(done.steps.map((st) => st.step)).to.include('copy-interrupted');
    const after = await cluster.waitForService('mv-cut', 120_000);
    expect(after.port).to.equal(before.port);
    expect(after.instances[0]).to.include({ id: source.id, cell: to });
    await eventually(async () => (await c.get('marker').catch(() => null)) === 'before', 60_000, 'data moved');
    expect((await c.get('blob159'))?.length).to.equal(blob.length);
    await sourceVolumeGone(source.cell, source.id);
  });

  it('refuses bad requests naming the field', async () => {
    const view = await cluster.waitForService('mv-kill', 60_000);
    const cases: Array<[unknown, number, string]> = [
      [{}, 400, 'to'],
      [{ to: 'nowhere' }, 400, 'to'],
      [{ to: view.instances[0].cell }, 400, 'to'],
      [{ to: freeCell(view), instance: 'mv-kill-99' }, 404, 'instance'],
      [{ to: freeCell(view), method: 'teleport' }, 400, 'method'],
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
