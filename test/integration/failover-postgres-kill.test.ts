/**
 * Unplanned PostgreSQL failover with `durability: sync` and one replica: the promoted
 * replica has no sync standby until the old primary is rewound and streams again, so commits wait
 * for that rejoin. The fault-schedule checker saw writes through the router fail for 10-11 s after
 * a SIGKILL and 16-47 s after `sf fence`; these tests hold the rejoin to the checker's bound, check
 * that the service never says `running` while writes cannot commit, and that no committed write
 * is lost.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import type { FencingStepView, ServiceEventView } from '../../control';
import type { ServiceView } from '../../control/services';
import { lookupUser } from '../../cell/run-command';
import { describeEachExecutor } from '../helpers/executor-under-test';
import { primaryOf, sf } from '../helpers/failover-support';
import { useServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';

const run = promisify(execFile);

interface Sample {
  /** When the write after the status ended, in ms after the fault. */
  at: number;
  /** When control answered with `status`: a write that then takes seconds must not date it. */
  statusAt: number;
  status: string | undefined;
  committed: boolean;
}

describeEachExecutor('failover: PostgreSQL primary lost with sync durability', function (executor) {
  this.timeout(300_000);
  // The faults here are engine faults, seen through the cells' reports. With the harness's 1 s
  // heartbeat TTL a cell stalled for a second on a loaded host was judged dead and its replica
  // replaced (seen at load 40: the run then measured a cell loss, not the engine's failover).
  const running = useServiceCluster(() => ({
    cells: 3,
    cellEnv: executor().cellEnv,
    cellArgs: ['--heartbeat-ttl-ms', '5000'],
  }));
  let cluster: ServiceCluster;
  let key: ServiceKeyAuth;
  let nextId = 0;
  const committed: number[] = [];

  async function psql(port: number, sql: string, timeoutMs = 10_000): Promise<string> {
    const { stdout } = await run(
      'psql',
      ['-h', '127.0.0.1', '-p', String(port), '-U', key.username, '-d', 'postgres', '-w', '-XAtq', '-c', sql],
      {
        timeout: timeoutMs,
        env: { PATH: process.env.PATH ?? '', PGPASSWORD: key.password, PGCONNECT_TIMEOUT: '2' },
      },
    );
    return stdout.trim();
  }

  /** One INSERT through the router; committed only when psql got the COMMIT's answer in time. */
  async function write(port: number): Promise<boolean> {
    const id = nextId++;
    try {
      await psql(port, `insert into kill_t values (${id})`, 2_000);
      committed.push(id);
      return true;
    } catch {
      return false;
    }
  }

  async function view(): Promise<ServiceView | undefined> {
    const res = await cluster.api<ServiceView>('GET', '/v3/service_instances/pgk');
    return res.status === 200 ? res.body : undefined;
  }

  /**
   * Samples status and a fresh write through the router until a write commits after `fault`
   * and the service settles at a new epoch with every instance running; returns the samples.
   */
  async function watch(port: number, fault: number, epoch: number): Promise<Sample[]> {
    const samples: Sample[] = [];
    for (;;) {
      const v = await view();
      const statusAt = Date.now() - fault;
      const ok = await write(port);
      samples.push({ at: Date.now() - fault, statusAt, status: v?.status, committed: ok });
      // Settled after the failover: a new epoch (an `sf fence` may take seconds to start).
      const settled =
        v !== undefined && v.epoch > epoch && v.status === 'running' && v.instances.every((i) => i.state === 'running');
      if (ok && settled && Date.now() - fault > 3_000) return samples;
      if (Date.now() - fault > 60_000) throw new Error(`not settled: ${JSON.stringify(samples.slice(-5))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Checks what every fault must leave: one writable instance, the old primary a sync standby. */
  async function checkRejoined(oldPrimary: string): Promise<void> {
    const v = (await view())!;
    const roles = await Promise.all(
      v.instances.map(async (i) => [i.id, await psql(i.port!, 'select pg_is_in_recovery()')]),
    );
    expect(
      roles.filter(([, r]) => r === 'f'),
      JSON.stringify(roles),
    ).to.have.length(1);
    expect(Object.fromEntries(roles)[oldPrimary], 'the old primary is a standby').to.equal('t');
    const primary = primaryOf(v);
    expect(primary.id).to.not.equal(oldPrimary);
    // It streams from the new primary: a write committed there shows up on it (pg_stat_replication
    // hides its details from a service key's user).
    const marker = nextId++;
    await psql(v.port, `insert into kill_t values (${marker})`);
    committed.push(marker);
    const old = v.instances.find((i) => i.id === oldPrimary)!;
    const deadline = Date.now() + 10_000;
    while ((await psql(old.port!, `select count(*) from kill_t where id = ${marker}`)) !== '1') {
      if (Date.now() > deadline) throw new Error(`${oldPrimary} did not replay a write of the new primary`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Where the time went: each fencing step and service event since the fault, in ms after it
   * (the cells' own steps are in their output with SF_TEST_CELL_LOG_LEVEL=info).
   */
  async function timeline(fault: number): Promise<string> {
    const [fencing, events] = await Promise.all([
      cluster.api<{ resources: FencingStepView[] }>('GET', '/v3/service_instances/pgk/fencing'),
      cluster.api<{ resources: ServiceEventView[] }>('GET', '/v3/service_instances/pgk/events'),
    ]);
    const lines = [
      ...(fencing.body.resources ?? []).map((f) => ({
        at: Date.parse(f.at),
        text: `fence ${f.step} ${f.outcome} ${f.instance_id ?? ''} ${f.message}`,
      })),
      ...(events.body.resources ?? []).map((e) => ({
        at: Date.parse(e.at),
        text: `event ${e.type} ${e.instance_id ?? ''} ${e.message}`,
      })),
    ]
      .filter((l) => l.at >= fault - 1_000)
      .sort((a, b) => a.at - b.at);
    return lines.map((l) => `        +${l.at - fault} ms ${l.text.slice(0, 160)}`).join('\n');
  }

  /**
   * When control began to act on the fault, in ms after it: the first fencing step it logged. An
   * `sf fence` starts seconds after its command on a loaded host; a kill is seen by a heartbeat.
   */
  async function fenceStartMs(fault: number): Promise<number> {
    const fencing = await cluster.api<{ resources: FencingStepView[] }>('GET', '/v3/service_instances/pgk/fencing');
    const starts = (fencing.body.resources ?? []).map((f) => Date.parse(f.at) - fault).filter((at) => at >= 0);
    return starts.length > 0 ? Math.min(...starts) : 0;
  }

  function recoveryMs(samples: Sample[]): number {
    const lastFailure = samples.filter((s) => !s.committed).at(-1);
    const after = samples.find((s) => s.committed && (!lastFailure || s.at > lastFailure.at));
    return after?.at ?? Number.POSITIVE_INFINITY;
  }

  before(async function () {
    // The first PostgreSQL on docker initialises its volume inside a container: minutes under load.
    this.timeout(600_000);
    cluster = running();
    const res = await cluster.api('POST', '/v3/service_instances', {
      name: 'pgk',
      engine: 'postgres',
      replicas: 1,
      durability: 'sync',
      volume: { sizeMb: 64 },
      ...executor().serviceFields,
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    const v = await cluster.waitForService(
      'pgk',
      180_000,
      (s) => s.status === 'running' && s.instances.every((i) => i.state === 'running'),
    );
    key = await serviceKey(cluster.api, 'pgk');
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await psql(v.port, 'create table if not exists kill_t (id int primary key)');
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 300));
      }
    }
  });

  afterEach(function () {
    // A failed case shows what each cell did last.
    if (this.currentTest?.state !== 'failed' || !cluster) return;
    for (const c of cluster.cells) console.log(`      --- ${c.name} ---\n${c.proc.output().slice(-6000)}`);
  });

  const faults = [
    'SIGKILL of the primary engine',
    'sf fence',
    'SIGKILL, its pid then taken by another process',
  ] as const;
  for (const fault of faults)
    it(`${fault}: writes commit again, the old primary rejoins as the sync standby, never running while writes wait`, async function () {
      // The pid in postmaster.pid is a host pid only on the process executor.
      if (fault.startsWith('SIGKILL, its pid') && executor().kind !== 'process') this.skip();
      const before = (await view())!;
      const old = primaryOf(before);
      // Warm: writes commit through the router before the fault.
      const warm = Date.now() + 30_000;
      while (!(await write(before.port)))
        if (Date.now() > warm) throw new Error('no write committed through the router before the fault');
      const t0 = Date.now();
      let action: Promise<{ code: number; stderr: string }> | undefined;
      let squatter: ChildProcess | undefined;
      if (fault === 'sf fence') action = sf(cluster, ['fence', 'pgk']);
      else await executor().killEngine(cluster, before, old.id);
      if (fault.startsWith('SIGKILL, its pid')) {
        // With pid_max 32768 a killed postmaster's pid comes back soon, and a zombie nobody reaped
        // answers signals too: PostgreSQL then takes its postmaster.pid for a live server and the
        // rewind of the deposed primary fails ("lock file already exists"). A live process of
        // ours stands in for the pid's new owner, as the engine's user: PostgreSQL takes a pid it
        // may not signal (EPERM) for another user's process, not for a server.
        const owner = lookupUser('postgres');
        squatter = spawn('sleep', ['120'], { stdio: 'ignore', ...(owner ? { uid: owner.uid, gid: owner.gid } : {}) });
        const lock = path.join(cluster.dataDir, old.cell, 'instances', old.id, 'data', 'postmaster.pid');
        const lines = (await readFile(lock, 'utf8')).split('\n');
        lines[0] = String(squatter.pid);
        await writeFile(lock, lines.join('\n'));
      }
      const samples = await watch(before.port, t0, before.epoch).finally(() => squatter?.kill('SIGKILL'));
      if (action) {
        const res = await action;
        expect(res.code, res.stderr).to.equal(0);
      }
      const recovered = recoveryMs(samples);
      const statusChanges = samples.filter((s, i) => i === 0 || s.status !== samples[i - 1].status);
      console.log(
        `      ${fault}: writes commit again ${recovered} ms after the fault; ` +
          `statuses ${statusChanges.map((s) => `${s.status}@${s.at}`).join(' -> ')}\n${await timeline(t0)}`,
      );
      // How fast is the bench's to measure (bench/docker-vs-process.ts, bench/fault-schedule.ts): a timing
      // bound here would measure the machine's load. Writes must come back before `watch` gives up.
      expect(recovered).to.be.lessThan(Number.POSITIVE_INFINITY);
      // Status tells the truth: once control could see the fault (3 s after it, or after an
      // `sf fence` began), `running` means writes commit. A status is dated by its answer.
      const seen = 3_000 + (fault === 'sf fence' ? await fenceStartMs(t0) : 0);
      const lies = samples.filter((s) => s.statusAt > seen && s.status === 'running' && !s.committed);
      expect(lies, JSON.stringify(lies)).to.deep.equal([]);
      await checkRejoined(old.id);
      // Every committed write is on the new primary (sync durability).
      const present = new Set(
        (await psql(before.port, 'select id from kill_t')).split('\n').filter(Boolean).map(Number),
      );
      expect(committed.filter((id) => !present.has(id))).to.deep.equal([]);
    });
});
