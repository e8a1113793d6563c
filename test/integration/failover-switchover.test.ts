/**
 * On a real platform (state Redis, control, router, three cells): a planned switchover
 * demotes the old primary for real on both engines, a refused operator action costs no write,
 * and a primary that cannot commit is reported `degraded`, not `running`.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { FencingStepView as FencingStep } from '../../control';
import type { ServiceView } from '../../control/services';
import { adminUser, enginePid, primaryOf, sf } from '../helpers/failover-support';
import { useServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';
import { eventually } from '../helpers/tcp-client';

const run = promisify(execFile);

/** psql as `auth` (a service key, or the management user); the password travels in the environment. */
async function psql(port: number, auth: ServiceKeyAuth, sql: string, timeoutMs = 10_000): Promise<string> {
  const { stdout } = await run(
    'psql',
    [
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      auth.username,
      '-d',
      'postgres',
      '-XAtq',
      '-v',
      'ON_ERROR_STOP=1',
      '-c',
      sql,
    ],
    { timeout: timeoutMs, env: { ...process.env, PGCONNECT_TIMEOUT: '3', PGPASSWORD: auth.password } },
  );
  return stdout.trim();
}

/**
 * `master` or `slave`, from INFO replication: a service key may not run ROLE (an @admin command,
 * docs/cells.md Security), and the key is what a client of the instance has.
 */
async function redisRole(port: number, auth: ServiceKeyAuth): Promise<string> {
  const r = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    ...auth,
  });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return /^role:(\w+)/m.exec(await r.info('replication'))?.[1] ?? 'unknown';
  } finally {
    r.disconnect();
  }
}

/** Reads an engine's role until `watching.on` turns false; each answer with when it was asked and came back. */
async function watchRole(
  port: number,
  auth: ServiceKeyAuth,
  watching: { on: boolean },
): Promise<Array<{ sent: number; at: number; role: string }>> {
  const r = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => 20, ...auth });
  r.on('error', () => undefined);
  const seen: Array<{ sent: number; at: number; role: string }> = [];
  try {
    while (watching.on) {
      const sent = performance.now();
      const info = await r.info('replication').catch(() => '');
      const role = /^role:(\w+)/m.exec(info)?.[1];
      if (role) seen.push({ sent, at: performance.now(), role });
      await new Promise((done) => setTimeout(done, 5));
    }
  } finally {
    r.disconnect();
  }
  return seen;
}

async function create(cluster: ServiceCluster, body: Record<string, unknown>): Promise<ServiceView> {
  const res = await cluster.api<ServiceView>('POST', '/v3/service_instances', { volume: { sizeMb: 64 }, ...body });
  expect(res.status, JSON.stringify(res.body)).to.equal(201);
  return cluster.waitForService(
    String(body.name),
    120_000,
    (v) => v.status === 'running' && v.instances.every((i) => i.state === 'running'),
  );
}

/** `step+ms` from the first step, to see where a switchover spends its time. */
function timeline(steps: FencingStep[]): string {
  const t0 = Date.parse(steps[0]?.at ?? '');
  return steps.map((s) => `${s.step}+${Date.parse(s.at) - t0}`).join(' ');
}

async function history(cluster: ServiceCluster, name: string): Promise<FencingStep[]> {
  return (await cluster.api<{ resources: FencingStep[] }>('GET', `/v3/service_instances/${name}/fencing`)).body
    .resources;
}

describe('failover: planned switchover, refused actions, degraded primaries', function () {
  this.timeout(240_000);
  const running = useServiceCluster({ cells: 3 });
  let cluster: ServiceCluster;
  beforeEach(() => {
    cluster = running();
  });

  it('refused actions cost no write: bad --to, unknown service, nothing to unfence, a second switchover target that is the primary', async () => {
    const view = await create(cluster, { name: 'guard', engine: 'redis', replicas: 1, durability: 'sync' });
    const primary = primaryOf(view);
    const client = new Redis({
      port: view.port,
      host: '127.0.0.1',
      maxRetriesPerRequest: 0,
      retryStrategy: () => 20,
      ...(await serviceKey(cluster.api, 'guard')),
    });
    client.on('error', () => undefined);
    await eventually(async () => (await client.set('warm', '1').catch(() => null)) === 'OK', 10_000, 'first write');
    const before = await history(cluster, 'guard');
    let ok = 0;
    let failed = 0;
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          await client.set(`g-${i}`, String(i));
          const acked = Number(await client.call('WAIT', '1', '1000'));
          if (acked >= 1) ok++;
          else failed++;
        } catch {
          failed++;
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    })();
    const refused: Array<[string[], number]> = [];
    try {
      await new Promise((r) => setTimeout(r, 300));
      for (const args of [
        ['failover', 'guard', '--to', 'nosuch'],
        ['failover', 'guard', '--to', primary.id],
        ['failover', 'nosuch'],
        ['fence', 'nosuch'],
        ['unfence', 'guard'],
      ]) {
        const res = await sf(cluster, args);
        refused.push([args, res.code]);
        expect(res.code, `sf ${args.join(' ')}: ${res.stderr}`).to.equal(2);
        expect(res.stderr.trim().split('\n')).to.have.length(1);
      }
      const api = await cluster.api<{ error: { code: string; field?: string } }>(
        'POST',
        '/v3/service_instances/guard/actions/failover',
        { to: 'nosuch' },
      );
      expect(api.status).to.equal(400);
      expect(api.body.error).to.include({ code: 'SF_ERR_INVALID_FAILOVER_TARGET', field: 'to' });
      await new Promise((r) => setTimeout(r, 1_500));
    } finally {
      stop = true;
      await writer;
      client.disconnect();
    }
    console.log(
      `      refused actions (${refused.length} CLI + 1 API) under a sync writer: ${ok} writes acknowledged, ${failed} failed`,
    );
    expect(failed).to.equal(0);
    expect(ok).to.be.greaterThan(0);
    const after = await cluster.waitForService('guard', 5_000, () => true);
    expect(after.epoch).to.equal(view.epoch);
    expect(primaryOf(after).id).to.equal(primary.id);
    expect(after.status).to.equal('running');
    expect(await history(cluster, 'guard')).to.deep.equal(before);
  });

  it('redis: sf failover leaves exactly one master; the old primary is a read-only replica that receives writes made through the router', async () => {
    const view = await create(cluster, { name: 'rsw', engine: 'redis', replicas: 1, durability: 'sync' });
    const old = primaryOf(view);
    const key = await serviceKey(cluster.api, 'rsw');
    // Each engine's own role, read over and over on a kept connection while the switchover runs.
    const watching = { on: true };
    const watched = view.instances.map((i) => watchRole(i.port!, key, watching));
    const t0 = performance.now();
    const res = await sf(cluster, ['failover', 'rsw', '--json']);
    const ms = performance.now() - t0;
    watching.on = false;
    const seen = await Promise.all(watched);
    // Never two masters. Proof of two would be the old primary answering `master` to a question
    // asked after the new one's `master` answer came back; asked and answered times make it exact.
    const oldSeen = seen[view.instances.findIndex((i) => i.id === old.id)]!;
    const newSeen = seen[view.instances.findIndex((i) => i.id !== old.id)]!;
    const lastOld = Math.max(...oldSeen.filter((r) => r.role === 'master').map((r) => r.sent));
    const firstNew = Math.min(...newSeen.filter((r) => r.role === 'master').map((r) => r.at));
    expect(Number.isFinite(firstNew), 'the new primary was seen as master').to.equal(true);
    expect(lastOld, `old primary asked and master at ${lastOld}, new one master by ${firstNew}`).to.be.at.most(
      firstNew,
    );
    expect(res.code, res.stderr).to.equal(0);
    const out = JSON.parse(res.stdout) as { steps: FencingStep[]; service: ServiceView };
    const steps = out.steps.map((s) => `${s.step}:${s.outcome}`);
    console.log(`      redis switchover (sf failover, sync, 1 replica): ${ms.toFixed(0)} ms; ${timeline(out.steps)}`);
    // Redis pauses the old primary's writes (no shutdown in the window) before anything is
    // promoted; the restart as a replica stops it afterwards.
    expect(steps).to.include.members(['pause:ok', 'promote:ok', 'rejoin:ok', 'commit-check:ok']);
    expect(steps.indexOf('pause:ok')).to.be.lessThan(steps.indexOf('promote:ok'));
    expect(steps.filter((s) => s.startsWith('stop:'))).to.deep.equal([]);

    // At the moment the command returns: one master, and the old primary is a replica.
    const roles = await Promise.all(out.service.instances.map((i) => redisRole(i.port!, key)));
    expect(roles.filter((r) => r === 'master')).to.have.length(1);
    const now = primaryOf(out.service);
    expect(now.id).to.not.equal(old.id);
    const oldPort = out.service.instances.find((i) => i.id === old.id)!.port!;
    expect(await redisRole(oldPort, key)).to.equal('slave');

    const direct = new Redis({ port: oldPort, host: '127.0.0.1', maxRetriesPerRequest: 0, ...key });
    const client = new Redis({
      port: view.port,
      host: '127.0.0.1',
      maxRetriesPerRequest: 0,
      retryStrategy: () => 20,
      ...key,
    });
    client.on('error', () => undefined);
    try {
      let err: Error | undefined;
      await direct.set('x', '1').catch((e: Error) => (err = e));
      expect(err?.message).to.match(/READONLY/);
      await eventually(
        async () => (await client.set('after-switch', 'v').catch(() => null)) === 'OK',
        10_000,
        'write through router',
      );
      expect(Number(await client.call('WAIT', '1', '5000'))).to.equal(1);
      await eventually(async () => (await direct.get('after-switch')) === 'v', 10_000, 'replicated to the old primary');
    } finally {
      direct.disconnect();
      client.disconnect();
    }
    const view2 = await cluster.waitForService('rsw', 20_000, (v) => v.status === 'running');
    expect(view2.instances.every((i) => i.state === 'running')).to.equal(true);
  });

  it('postgres: sf failover leaves exactly one writable instance; the old primary is a standby that replays writes made through the router', async () => {
    const view = await create(cluster, {
      name: 'psw',
      engine: 'postgres',
      replicas: 1,
      durability: 'sync',
      volume: { sizeMb: 128 },
    });
    const old = primaryOf(view);
    const key = await serviceKey(cluster.api, 'psw');
    await eventually(
      async () => {
        await psql(view.port, key, 'create table if not exists t (id int primary key)');
        await psql(view.port, key, 'insert into t values (1) on conflict do nothing');
        return true;
      },
      30_000,
      'first write through the router',
    );
    const t0 = performance.now();
    const wall0 = Date.now();
    const res = await sf(cluster, ['failover', 'psw', '--json']);
    const wall1 = Date.now();
    const ms = performance.now() - t0;
    expect(res.code, res.stderr).to.equal(0);
    const out = JSON.parse(res.stdout) as { steps: FencingStep[]; service: ServiceView };
    const steps = out.steps.map((s) => `${s.step}:${s.outcome}`);
    console.log(
      `      postgres switchover (sf failover, sync, 1 replica): ${ms.toFixed(0)} ms; first step ${(Date.parse(out.steps[0].at) - wall0).toFixed(0)} ms after the call, last ${(wall1 - Date.parse(out.steps.at(-1)?.at ?? '')).toFixed(0)} ms before the exit; ${timeline(out.steps)}`,
    );
    // PostgreSQL cannot pause writes: it is stopped cleanly before the promotion.
    expect(steps).to.include.members(['pause:skipped', 'stop:ok', 'promote:ok', 'rejoin:ok', 'commit-check:ok']);
    // Stopped at once, not after the catch-up: its stop reports where it left the data (the
    // shutdown checkpoint in pg_control), and that position is the one the target reached.
    expect(steps.indexOf('stop:ok')).to.be.lessThan(steps.indexOf('catch-up:ok'));
    const stopped = /at position (\d+)/.exec(out.steps.find((st) => st.step === 'stop')?.message ?? '')?.[1];
    const reached = /position (\d+) in/.exec(out.steps.find((st) => st.step === 'catch-up')?.message ?? '')?.[1];
    expect(stopped, 'position reported by the stop').to.match(/^[1-9]\d*$/);
    expect(reached).to.equal(stopped);

    const recovery = await Promise.all(
      out.service.instances.map((i) => psql(i.port!, key, 'select pg_is_in_recovery()')),
    );
    expect(
      recovery.filter((r) => r === 'f'),
      recovery.join(','),
    ).to.have.length(1);
    const oldPort = out.service.instances.find((i) => i.id === old.id)!.port!;
    expect(await psql(oldPort, key, 'select pg_is_in_recovery()')).to.equal('t');

    // A write through the router commits (sync: the old primary, now the standby, acknowledged it).
    await eventually(
      async () => {
        await psql(view.port, key, 'insert into t values (2)', 10_000);
        return true;
      },
      15_000,
      'write through the router after the switchover',
    );
    await eventually(
      async () => (await psql(oldPort, key, 'select count(*) from t')) === '2',
      10_000,
      'replayed on the old primary',
    );
    let refused = '';
    await psql(oldPort, key, 'insert into t values (3)').catch((e: Error) => (refused = e.message));
    expect(refused).to.match(/read-only/);
  });

  it('a sync primary whose standby stops acknowledging is degraded with the reason, and running again once it acknowledges', async () => {
    const view = await create(cluster, { name: 'stall', engine: 'redis', replicas: 1, durability: 'sync' });
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const pid = await enginePid(cluster, view, replica.id);
    process.kill(pid, 'SIGSTOP');
    try {
      const degraded = await cluster.waitForService('stall', 20_000, (v) => v.status === 'degraded');
      console.log(`      degraded: ${degraded.message}`);
      expect(degraded.message).to.match(/cannot commit/);
      const p = primaryOf(degraded);
      expect(p.state).to.equal('degraded');
      expect(p.last_error?.message).to.match(/acknowledged|did not commit/);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await cluster.waitForService('stall', 30_000, (v) => v.status === 'running' && primaryOf(v).state === 'running');
  });

  it('a sync postgres primary whose standby hangs is degraded (its commits wait), and running again once the standby resumes', async () => {
    const view = await create(cluster, {
      name: 'pgstall',
      engine: 'postgres',
      replicas: 1,
      durability: 'sync',
      volume: { sizeMb: 128 },
    });
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const pid = await enginePid(cluster, view, replica.id);
    // The postmaster and its children (each child is a process group of its own, so the
    // postmaster's group alone would leave the WAL receiver acknowledging).
    const { stdout } = await run('pgrep', ['-P', String(pid)]);
    const pids = [pid, ...stdout.split(/\s+/).filter(Boolean).map(Number)];
    // A short-lived child (an autovacuum worker) may be gone by now: that one needs no stopping.
    const signal = (sig: NodeJS.Signals): void => {
      for (const p of pids) {
        try {
          process.kill(p, sig);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
        }
      }
    };
    signal('SIGSTOP');
    try {
      const degraded = await cluster.waitForService('pgstall', 30_000, (v) => v.status === 'degraded');
      console.log(`      degraded: ${degraded.message}`);
      expect(degraded.message).to.match(/cannot commit/);
      expect(primaryOf(degraded).state).to.equal('degraded');
    } finally {
      signal('SIGCONT');
    }
    await cluster.waitForService('pgstall', 30_000, (v) => v.status === 'running' && primaryOf(v).state === 'running');
    // The checks that ran out were cancelled: no backend is left waiting for the standby.
    const settled = await cluster.waitForService('pgstall', 5_000, () => true);
    const p = primaryOf(settled);
    // As the management user: a key sees no wait event of the platform's own commit-check sessions.
    const admin = await adminUser(cluster, settled, p.id);
    expect(await psql(p.port!, admin, "select count(*) from pg_stat_activity where wait_event = 'SyncRep'")).to.equal(
      '0',
    );
  });
});
