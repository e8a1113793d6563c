/**
 * What does control cost as the platform grows? One `sf control` (a real process, measured from
 * /proc), a real state redis-server, and simulated cells (bench/cell-simulator.ts) speaking the
 * real cell protocol. For N services over C cells:
 *
 * - control CPU at rest and state Redis commands per second at rest (INFO total_commands_processed
 *   over a window once everything runs; the top commands from INFO commandstats);
 * - create-service latency at N existing: POST until a cell sees the primary's desired spec
 *   ("scheduled"), p50/p99 over sequential creates;
 * - failover of one service (a primary with one replica whose engine dies) until the replica is
 *   promoted;
 * - leader failover: a standby control, the leader SIGKILLed; time until the standby leads and a
 *   new service is scheduled, and how many fence orders healthy instances got meanwhile;
 * - listing at size: every service page by page as `sf services` does, every TCP route as
 *   `sf routes` does;
 * - bulk deletion of the N services.
 *
 *   node dist/bench/control-at-scale.js --services 1000 --cells 100 [--creates 50] [--window-s 10]
 *     [--concurrency 8] [--time-limit-s 900] [--skip-delete] [--skip-leader-failover]
 *     [--cpu-prof DIR] [--heartbeat-ms MS (the simulated cells'; default half their 3 s TTL)]
 *     [--failovers K (services failed over one after another; the median is reported)]
 *
 * `--cpu-prof DIR` runs control under `node --cpu-prof` and leaves its .cpuprofile in DIR (the
 * leader's is written when it stops, so use it with --skip-leader-failover).
 *
 * Writes bench/results/control-at-scale-<N>x<C>.json. The machine is shared: the load average is
 * recorded with every figure.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { groupCpuSeconds } from './lib/proc-cpu';
import { freePort, makeTempDir, sleep, startProcess, stopAll, type ManagedProcess } from './lib/processes';
import { formatNumber, formatTable, writeResults } from './lib/report';
import { waitForPort } from '../test/helpers/redis-server';

const TOKEN = 'bench-admin-token-0123456789abcdef';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const n = Number(process.argv[i + 1]);
  if (!Number.isFinite(n) || n < 0) {
    process.stderr.write(`control-at-scale: --${name} must be a number >= 0\n`);
    process.exit(2);
  }
  return n;
}

const SERVICES = arg('services', 100);
const CELLS = arg('cells', 10);
const CREATES = arg('creates', 50);
const WINDOW_S = arg('window-s', 10);
const CONCURRENCY = arg('concurrency', 8);
const TIME_LIMIT_MS = arg('time-limit-s', 900) * 1000;
const SKIP_DELETE = process.argv.includes('--skip-delete');
/** Services failed over one after another in step 4 (the median is reported). */
const FAILOVERS = arg('failovers', 1);
const SKIP_LEADER = process.argv.includes('--skip-leader-failover');
/** The simulated cells' heartbeat period (0: the agent's default, half the TTL). */
const HEARTBEAT_MS = arg('heartbeat-ms', 0);
const CPU_PROF_DIR = ((): string | undefined => {
  const i = process.argv.indexOf('--cpu-prof');
  return i >= 0 ? process.argv[i + 1] : undefined;
})();

type SimMessage =
  | { type: 'ready'; cells: number }
  | { type: 'scheduled' | 'running'; instanceId: string; service: string; at: number }
  | { type: 'order'; order: string; instanceId: string | null; ok: boolean; at: number }
  | { type: 'stats'; stats: Record<string, number> }
  | { type: 'failed'; instanceId: string; ok: boolean };

class Simulator {
  readonly child: ChildProcess;
  readonly scheduled = new Map<string, number>();
  readonly running = new Map<string, number>();
  readonly orders: Array<{ order: string; instanceId: string | null; ok: boolean; at: number }> = [];
  private waiters: Array<() => void> = [];

  constructor(redisUrl: string, cells: number) {
    const heartbeat = HEARTBEAT_MS > 0 ? ['--heartbeat-ms', String(HEARTBEAT_MS)] : [];
    this.child = fork(
      join(__dirname, 'cell-simulator.js'),
      ['--redis', redisUrl, '--cells', String(cells), ...heartbeat],
      {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        detached: true,
      },
    );
    this.child.on('message', (m: SimMessage) => {
      if (m.type === 'scheduled') {
        if (!this.scheduled.has(m.service)) this.scheduled.set(m.service, m.at);
      } else if (m.type === 'running') this.running.set(m.instanceId, m.at);
      else if (m.type === 'order') this.orders.push(m);
      const w = this.waiters;
      this.waiters = [];
      w.forEach((f) => f());
    });
  }

  async until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }

  request<T extends SimMessage['type']>(
    msg: Record<string, unknown>,
    reply: T,
  ): Promise<Extract<SimMessage, { type: T }>> {
    return new Promise((resolve) => {
      const on = (m: SimMessage): void => {
        if (m.type !== reply) return;
        this.child.off('message', on);
        resolve(m as Extract<SimMessage, { type: T }>);
      };
      this.child.on('message', on);
      this.child.send(msg);
    });
  }

  stop(): void {
    try {
      if (this.child.pid) process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

class Api {
  constructor(readonly base: string) {}

  async call(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? (JSON.parse(text) as unknown) : null };
  }
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function load(): string {
  return loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');
}

async function startControl(redisUrl: string, home: string, name: string): Promise<{ proc: ManagedProcess; api: Api }> {
  const port = await freePort();
  const proc = startProcess(
    name,
    process.execPath,
    [
      ...(CPU_PROF_DIR ? ['--cpu-prof', '--cpu-prof-dir', CPU_PROF_DIR] : []),
      join(__dirname, '..', 'cli', 'sf.js'),
      'control',
      '--listen',
      `127.0.0.1:${port}`,
      '--redis',
      redisUrl,
    ],
    { env: { ...process.env, SF_API_TOKEN: TOKEN, SF_HOME: home, SF_LOG: 'warn' } },
  );
  await waitForPort(port, '127.0.0.1', 30_000);
  return { proc, api: new Api(`http://127.0.0.1:${port}`) };
}

async function isLeader(api: Api): Promise<boolean> {
  try {
    const res = await api.call('GET', '/v3/leader');
    return (res.json as { this_control?: { leader?: boolean } }).this_control?.leader === true;
  } catch {
    return false;
  }
}

async function commandsProcessed(redis: Redis): Promise<{ total: number; byCommand: Map<string, number> }> {
  const stats = await redis.info('stats');
  const total = Number(/total_commands_processed:(\d+)/.exec(stats)?.[1] ?? 0);
  const byCommand = new Map<string, number>();
  for (const m of (await redis.info('commandstats')).matchAll(/cmdstat_([^:]+):calls=(\d+)/g))
    byCommand.set(m[1]!, Number(m[2]));
  return { total, byCommand };
}

/**
 * When each step began and ended, on the monotonic clock a `--cpu-prof` profile's timestamps use
 * (microseconds), so a profile can be cut into the steps.
 */
const phases: Array<{ phase: string; fromUs: number; toUs?: number }> = [];
function phase(name: string): void {
  const now = Number(process.hrtime.bigint() / 1000n);
  const open = phases[phases.length - 1];
  if (open && open.toUs === undefined) open.toUs = now;
  if (name) phases.push({ phase: name, fromUs: now });
}

/** State Redis commands between two `commandsProcessed` reads, the busiest first. */
function commandsBetween(
  a: { total: number; byCommand: Map<string, number> },
  b: { total: number; byCommand: Map<string, number> },
  per: number,
): { total: number; top: Record<string, number> } {
  const top = [...b.byCommand]
    .map(([cmd, calls]) => [cmd, (calls - (a.byCommand.get(cmd) ?? 0)) / per] as const)
    .filter(([, n]) => n > 0)
    .sort((x, y) => y[1] - x[1])
    .slice(0, 10)
    .map(([cmd, n]) => [cmd, Math.round(n * 10) / 10] as const);
  return { total: Math.round(((b.total - a.total) / per) * 10) / 10, top: Object.fromEntries(top) };
}

/** Creates retried after a 503 (store busy), as a client would; counted in the result. */
let busyRetries = 0;

async function createService(api: Api, name: string, replicas = 0): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const res = await api.call('POST', '/v3/service_instances', { name, engine: 'redis', replicas });
    if (res.status === 201) return t0;
    if (res.status !== 503) throw new Error(`create ${name}: ${res.status} ${JSON.stringify(res.json)}`);
    busyRetries++;
    await sleep(100);
  }
}

let simulator: Simulator | null = null;
/** Filled step by step, so a run that times out still reports what it measured. */
const partial: Record<string, unknown> = {};
let stateRedis: Redis | null = null;

async function main(): Promise<void> {
  const started = Date.now();
  const result = partial;
  Object.assign(result, { services: SERVICES, cells: CELLS, loadStart: load() });
  const home = makeTempDir('sf-scale-');
  const redisPort = await freePort();
  startProcess('redis', 'redis-server', [
    '--port',
    String(redisPort),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
  ]);
  await waitForPort(redisPort);
  const redisUrl = `redis://127.0.0.1:${redisPort}`;
  const redis = new Redis(redisUrl, { lazyConnect: false, maxRetriesPerRequest: 1 });
  stateRedis = redis;
  const leader = await startControl(redisUrl, home, 'control-1');
  const api = leader.api;
  let active = leader;
  const groups = (await api.call('GET', '/routing/v1/router_groups')).json as Array<{ guid: string; name: string }>;
  const group = groups.find((g) => g.name === 'default');
  if (!group) throw new Error('no default router group');
  const put = await api.call('PUT', `/routing/v1/router_groups/${group.guid}`, { reservable_ports: '16000-40000' });
  if (put.status !== 200) throw new Error(`router group: ${put.status} ${JSON.stringify(put.json)}`);
  const sim = new Simulator(redisUrl, CELLS);
  simulator = sim;
  await sim.until(() => sim.child.connected, 5_000, 'simulator');
  await new Promise<void>((resolve) => sim.child.once('message', () => resolve()));

  // 1. N services, created CONCURRENCY at a time, until each primary runs.
  result.phases = phases;
  phase('create-n');
  const t0 = Date.now();
  let next = 0;
  let created = 0;
  const names = Array.from({ length: SERVICES }, (_, i) => `svc-${String(i).padStart(5, '0')}`);
  // Every 500 creates: how long it took so far, for the creation rate as the platform grows.
  const progress: Array<{ created: number; seconds: number; load: string }> = [];
  result.createProgress = progress;
  await Promise.all(
    Array.from({ length: Math.max(1, CONCURRENCY) }, async () => {
      while (next < names.length && Date.now() - started < TIME_LIMIT_MS) {
        const name = names[next++]!;
        await createService(api, name);
        created++;
        if (created % 500 === 0) {
          progress.push({ created, seconds: (Date.now() - t0) / 1000, load: load() });
          process.stderr.write(`  ${created} created in ${((Date.now() - t0) / 1000).toFixed(0)} s (load ${load()})\n`);
        }
      }
    }),
  );
  const createdAll = Date.now() - t0;
  await sim.until(
    () => sim.running.size >= created,
    // Scheduling may trail creation at size: at least five minutes for the backlog.
    Math.max(300_000, TIME_LIMIT_MS - (Date.now() - started)),
    `${created} instances running`,
  );
  result.created = created;
  result.createAllSeconds = createdAll / 1000;
  result.allRunningSeconds = (Date.now() - t0) / 1000;
  process.stderr.write(`  ${created} services running after ${result.allRunningSeconds as number} s\n`);

  // 2. At rest: let the last statuses settle (no service record written for 5 s; the leader
  // marks services running after the cells report so), then measure a window.
  phase('settle');
  await sleep(5_000);
  const settleFrom = Date.now();
  for (let last = '', stable = 0; stable < 5 && Date.now() - settleFrom < 300_000;) {
    const version = (await redis.get('sf:services:version')) ?? '';
    stable = version === last ? stable + 1 : 0;
    last = version;
    await sleep(1_000);
  }
  result.settleSeconds = (Date.now() - settleFrom) / 1000;
  // Every record should say running by now; anything else is a convergence problem worth seeing.
  const statuses: Record<string, number> = {};
  for (const text of await redis.hvals('sf:services')) {
    const status = (JSON.parse(text) as { status: string }).status;
    statuses[status] = (statuses[status] ?? 0) + 1;
  }
  result.statusesAtRest = statuses;
  phase('rest');
  const cpu0 = groupCpuSeconds(leader.proc.pid);
  const ops0 = await commandsProcessed(redis);
  const w0 = Date.now();
  await sleep(WINDOW_S * 1000);
  const seconds = (Date.now() - w0) / 1000;
  const cpu1 = groupCpuSeconds(leader.proc.pid);
  const ops1 = await commandsProcessed(redis);
  const top = [...ops1.byCommand]
    .map(([cmd, calls]) => [cmd, (calls - (ops0.byCommand.get(cmd) ?? 0)) / seconds] as const)
    .filter(([, rate]) => rate > 0)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 8);
  result.atRest = {
    controlCpuPercent: (100 * (cpu1 - cpu0)) / seconds,
    redisOpsPerSecond: (ops1.total - ops0.total) / seconds,
    topCommands: Object.fromEntries(top),
    load: load(),
  };

  // 2b. Listing at size, as `sf services` (pages of 1,000 following `next`) and `sf routes` do.
  phase('listing');
  const l0 = Date.now();
  let listed = 0;
  for (let path: string | null = '/v3/service_instances?page=1&per_page=1000'; path;) {
    const page = (await api.call('GET', path)).json as {
      resources: unknown[];
      pagination?: { next: { href: string } | null };
    };
    listed += page.resources.length;
    path = page.pagination?.next?.href ?? null;
  }
  const servicesListMs = Date.now() - l0;
  const r0 = Date.now();
  const routes = (await api.call('GET', '/routing/v1/tcp_routes')).json as unknown[];
  result.listing = { services: listed, servicesMs: servicesListMs, routes: routes.length, routesMs: Date.now() - r0 };

  // 3. create-service latency with N existing: POST → a cell has the primary's spec.
  const createLatency: number[] = [];
  const postLatency: number[] = [];
  phase('creates');
  const createOps0 = await commandsProcessed(redis);
  for (let i = 0; i < CREATES; i++) {
    const name = `probe-${i}`;
    const t = await createService(api, name);
    postLatency.push(Date.now() - t);
    await sim.until(() => sim.scheduled.has(name), 120_000, `${name} scheduled`);
    createLatency.push(sim.scheduled.get(name)! - t);
  }
  result.create = {
    scheduledP50Ms: percentile(createLatency, 50),
    scheduledP99Ms: percentile(createLatency, 99),
    postP50Ms: percentile(postLatency, 50),
    postP99Ms: percentile(postLatency, 99),
    samples: createLatency.length,
    // Per create, the simulated cells' heartbeats and polls meanwhile included.
    commandsPerCreate: commandsBetween(createOps0, await commandsProcessed(redis), Math.max(1, CREATES)),
    load: load(),
  };

  // 4. Failover of one service: its primary's engine dies; time until the replica is promoted.
  // `--failovers K` services with a replica each, failed one after another (a single failover is
  // one sample of a noisy machine).
  phase('failover-setup');
  const probes = Array.from({ length: Math.max(1, FAILOVERS) }, (_, i) =>
    FAILOVERS > 1 ? `failover-probe-${i}` : 'failover-probe',
  );
  for (const name of probes) await createService(api, name, 1);
  await sim.until(
    () => probes.every((name) => [...sim.running.keys()].filter((id) => id.startsWith(`${name}-`)).length >= 2),
    120_000,
    'failover probes running',
  );
  await sleep(3_000);
  phase('failover');
  const failOps0 = await commandsProcessed(redis);
  const promotions: number[] = [];
  // Where each failover's time went: when each fencing step ended, after the engine died (the
  // first step's time is control noticing; the rest are mostly orders the simulated cell runs).
  const stepTimes = new Map<string, number[]>();
  for (const name of probes) {
    const view = (await api.call('GET', `/v3/service_instances/${name}`)).json as {
      instances: Array<{ id: string; role: string }>;
    };
    const primaryId = view.instances.find((i) => i.role === 'primary')?.id;
    if (!primaryId) throw new Error(`${name} has no primary`);
    const failAt = Date.now();
    await sim.request({ type: 'fail', instanceId: primaryId }, 'failed');
    const promotedOf = () =>
      sim.orders.find((o) => o.order === 'promote' && o.ok && o.at >= failAt && o.instanceId?.startsWith(`${name}-`));
    await sim.until(() => promotedOf() !== undefined, 60_000, `promotion of the ${name} replica`);
    promotions.push(promotedOf()!.at - failAt);
    const steps = (await api.call('GET', `/v3/service_instances/${name}/fencing`)).json as {
      resources?: Array<{ step: string; at: string }>;
    };
    for (const step of steps.resources ?? []) {
      const at = Date.parse(step.at);
      if (at < failAt) continue;
      const list = stepTimes.get(step.step) ?? [];
      list.push(at - failAt);
      stepTimes.set(step.step, list);
    }
    if (probes.length > 1) await sleep(1_000);
  }
  result.failover = {
    promotedMs: percentile(promotions, 50),
    maxMs: Math.max(...promotions),
    samplesMs: promotions,
    // Median time after the engine died at which each fencing step was recorded.
    stepsAtMs: Object.fromEntries([...stepTimes].map(([step, at]) => [step, percentile(at, 50)])),
    // During the failovers (and the pauses between them), per failover, the simulated cells'
    // heartbeats and polls included.
    commands: commandsBetween(failOps0, await commandsProcessed(redis), probes.length),
    load: load(),
  };

  // 5. Leader failover: a standby takes over after the leader is SIGKILLed.
  if (!SKIP_LEADER) {
    phase('leader-failover');
    const standby = await startControl(redisUrl, home, 'control-2');
    await sleep(2_000);
    const fencesBefore = sim.orders.filter((o) => o.order === 'fence').length;
    const killAt = Date.now();
    process.kill(-leader.proc.pid, 'SIGKILL');
    await leader.proc.exited;
    while (!(await isLeader(standby.api))) {
      if (Date.now() - killAt > 60_000) throw new Error('the standby did not take over');
      await sleep(50);
    }
    const ledAt = Date.now();
    const t = await createService(standby.api, 'after-leader-change');
    await sim.until(() => sim.scheduled.has('after-leader-change'), 60_000, 'a service scheduled by the new leader');
    await sleep(10_000);
    result.leaderFailover = {
      leadsAfterMs: ledAt - killAt,
      firstScheduledAfterKillMs: sim.scheduled.get('after-leader-change')! - killAt,
      createScheduledMs: sim.scheduled.get('after-leader-change')! - t,
      fenceOrdersWithin10s: sim.orders.filter((o) => o.order === 'fence').length - fencesBefore,
      load: load(),
    };
    active = standby;
  }

  // 6. Bulk deletion of everything created in step 1.
  if (!SKIP_DELETE) {
    phase('delete');
    const d0 = Date.now();
    let i = 0;
    await Promise.all(
      Array.from({ length: Math.max(1, CONCURRENCY) }, async () => {
        while (i < created) {
          const name = names[i++]!;
          await active.api.call('DELETE', `/v3/service_instances/${name}`);
        }
      }),
    );
    const requested = Date.now() - d0;
    phase('delete-wait');
    for (;;) {
      const count = Number(await redis.hlen('sf:services'));
      if (count <= CREATES + 1 + Math.max(1, FAILOVERS) || Date.now() - d0 > TIME_LIMIT_MS) break;
      await sleep(500);
    }
    result.bulkDelete = { requestsSeconds: requested / 1000, goneSeconds: (Date.now() - d0) / 1000, load: load() };
  }

  phase('');
  result.createBusyRetries = busyRetries;
  // What the controls warned about (their log level is warn), last lines.
  result.controlWarnings = [leader, active === leader ? null : active]
    .flatMap((c) => (c ? c.proc.output().trim().split('\n') : []))
    .filter((l) => l.length > 0 && !l.includes('"level":30'))
    .slice(-20)
    .map((l) => l.slice(0, 300));
  result.simulator = (await sim.request({ type: 'stats' }, 'stats')).stats;
  result.loadEnd = load();
  sim.stop();
  redis.disconnect();
  const file = writeResults(`control-at-scale-${SERVICES}x${CELLS}`, result);
  const rest = result.atRest as { controlCpuPercent: number; redisOpsPerSecond: number };
  const create = result.create as { scheduledP50Ms: number; scheduledP99Ms: number };
  process.stdout.write(
    formatTable(
      [
        'services',
        'cells',
        'control CPU %',
        'redis ops/s',
        'create p50 ms',
        'create p99 ms',
        'failover ms',
        'list ms',
        'load',
      ],
      [
        [
          String(created),
          String(CELLS),
          formatNumber(rest.controlCpuPercent),
          formatNumber(rest.redisOpsPerSecond),
          formatNumber(create.scheduledP50Ms),
          formatNumber(create.scheduledP99Ms),
          formatNumber((result.failover as { promotedMs: number }).promotedMs),
          formatNumber((result.listing as { servicesMs: number }).servicesMs),
          String(result.loadEnd),
        ],
      ],
    ) + `\n${JSON.stringify(result, null, 2)}\nwrote ${file}\n`,
  );
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`control-at-scale: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    partial.error = err instanceof Error ? err.message : String(err);
    partial.loadEnd = load();
    process.stdout.write(`partial: ${JSON.stringify(partial, null, 2)}\n`);
    writeResults(`control-at-scale-${SERVICES}x${CELLS}`, partial);
    process.exitCode = 1;
  })
  .finally(() => {
    simulator?.stop();
    stateRedis?.disconnect();
    void stopAll();
  });
