/**
 * What does running instances in containers cost? For Redis and PostgreSQL, the same service
 * (one primary, one replica, async) created on the process executor and on the docker executor,
 * every part real (state redis, control, router and two `sf cell` processes, a Docker daemon with
 * the engine images built here): the time from the create request to the first query answered
 * through the router, the time from creating a second service key to its first query answered
 * through the router (the cell applying a key to the running primary), and the failover time from a SIGKILL of the primary's engine to the first
 * write the router gets answered by the new primary. Executors are interleaved round by round so
 * machine load hits each alike; the table gives medians and the docker/process ratio.
 *
 *   node dist/bench/docker-vs-process.js [--rounds N] [--quick] [--no-wait] [--engine redis|postgres]
 *
 * Writes bench/results/docker-vs-process.json with every sample and the load average.
 */
import { execFile } from 'node:child_process';
import { loadavg } from 'node:os';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import type { ServiceView } from '../control/services';
import type { ActualInstance } from '../protocol/cell-protocol';
import { keyLayout } from '../protocol/keys';
import { releaseDockerDaemon, useDockerDaemon } from '../test/helpers/docker-daemon';
import { startServiceCluster, type ServiceCluster } from '../test/helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../test/helpers/service-key';
import { formatNumber, formatRatio, formatTable, median, writeResults } from './lib/report';
import { acquireRunLock } from './lib/run-lock';

const run = promisify(execFile);
const KEYS = keyLayout('sf:');
const ENGINES = ['redis', 'postgres'] as const;
const EXECUTORS = ['process', 'docker'] as const;
type Engine = (typeof ENGINES)[number];
type ExecutorKind = (typeof EXECUTORS)[number];

interface Sample {
  engine: Engine;
  executor: ExecutorKind;
  round: number;
  createToFirstQueryMs: number;
  keyApplyMs: number;
  failoverMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** One query through the router that only a primary answers as expected (a Redis write, PostgreSQL not in recovery). */
async function query(engine: Engine, port: number, key: ServiceKeyAuth, n: number): Promise<boolean> {
  if (engine === 'redis') {
    const c = new Redis({
      port,
      host: '127.0.0.1',
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      ...key,
    });
    c.on('error', () => undefined);
    try {
      await c.connect();
      return (await c.set(`bench-${n}`, 'x')) === 'OK';
    } finally {
      c.disconnect();
    }
  }
  // Only a primary answers `f`: after a failover, the new one.
  const { stdout } = await run(
    'psql',
    [
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      key.username,
      '-d',
      'postgres',
      '-w',
      '-Atq',
      '-c',
      'select pg_is_in_recovery()',
    ],
    { timeout: 5_000, env: { PATH: process.env.PATH ?? '', PGPASSWORD: key.password, PGCONNECT_TIMEOUT: '2' } },
  );
  return stdout.trim() === 'f';
}

async function untilQuery(engine: Engine, port: number, key: ServiceKeyAuth, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  for (let n = 0; ; n++) {
    if (await query(engine, port, key, n).catch(() => false)) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs)
      throw new Error(`no ${engine} query through port ${port} within ${timeoutMs} ms`);
    await sleep(20);
  }
}

async function primaryPid(cluster: ServiceCluster, view: ServiceView): Promise<number> {
  const p = view.instances.find((i) => i.role === 'primary');
  if (!p) throw new Error(`${view.name} has no primary`);
  const text = await cluster.state.hget(KEYS.cell(p.cell).actual, p.id);
  const pid = text ? (JSON.parse(text) as ActualInstance).pid : null;
  if (!pid) throw new Error(`no pid for ${p.id}`);
  return pid;
}

async function measure(
  cluster: ServiceCluster,
  engine: Engine,
  executor: ExecutorKind,
  round: number,
): Promise<Sample> {
  const name = `${engine === 'redis' ? 'r' : 'pg'}-${executor}-${round}`;
  const t0 = performance.now();
  const res = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
    name,
    engine,
    replicas: 1,
    durability: 'async',
    executor,
    volume: { size_mb: 128 },
  });
  if (res.status !== 201) throw new Error(`create ${name}: ${res.status} ${JSON.stringify(res.body)}`);
  const key = await serviceKey(cluster.api, name);
  await untilQuery(engine, res.body.port, key, 300_000);
  const createToFirstQueryMs = performance.now() - t0;
  const view = await cluster.waitForService(name, 300_000);
  // A key created on a running service: the cell applies it to the primary (a role or ACL user).
  const k0 = performance.now();
  const second = await serviceKey(cluster.api, name, 'second');
  await untilQuery(engine, view.port, second, 120_000);
  const keyApplyMs = performance.now() - k0;
  // Let the replica catch up before the kill, as a running service would have.
  await sleep(1_000);
  const pid = await primaryPid(cluster, view);
  const t1 = performance.now();
  process.kill(pid, 'SIGKILL');
  await untilQuery(engine, view.port, key, 120_000);
  const failoverMs = performance.now() - t1;
  await cluster.api('DELETE', `/v3/service_instances/${name}`);
  console.log(
    `  ${name}: create -> first query ${formatNumber(createToFirstQueryMs)} ms, key -> first query ${formatNumber(keyApplyMs)} ms, SIGKILL -> write served ${formatNumber(failoverMs)} ms`,
  );
  return { engine, executor, round, createToFirstQueryMs, keyApplyMs, failoverMs };
}

async function main(): Promise<void> {
  const rounds = Number(flag('--rounds') ?? (process.argv.includes('--quick') ? 1 : 2));
  if (!Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write('docker-vs-process: --rounds must be a positive integer\n');
    process.exit(2);
  }
  const only = flag('--engine');
  if (only !== undefined && !ENGINES.some((e) => e === only)) {
    process.stderr.write(`docker-vs-process: --engine must be one of ${ENGINES.join(', ')}\n`);
    process.exit(2);
  }
  const engines = ENGINES.filter((e) => only === undefined || e === only);
  // --no-wait: measure now even while another load benchmark runs (its load is then in the
  // figures, and in the load average printed with them).
  if (!process.argv.includes('--no-wait')) await acquireRunLock('docker-vs-process');
  const daemon = await useDockerDaemon((line) => console.log(`  image build: ${line}`));
  if (typeof daemon === 'string') {
    console.error(`docker-vs-process: no Docker daemon: ${daemon}`);
    process.exitCode = 1;
    return;
  }
  const loadBefore = loadavg();
  // A cell stalled for a second on a loaded host must not be judged dead (the harness's 1 s TTL):
  // the measures are of engines, not of cell losses.
  const cluster = await startServiceCluster({
    cells: 2,
    cellEnv: { DOCKER_HOST: `unix://${daemon.socketPath}` },
    cellArgs: ['--heartbeat-ttl-ms', '5000'],
  });
  const samples: Sample[] = [];
  try {
    for (let round = 0; round < rounds; round++)
      for (const engine of engines)
        for (const executor of round % 2 === 0 ? EXECUTORS : [...EXECUTORS].reverse())
          samples.push(await measure(cluster, engine, executor, round));
  } finally {
    await cluster.stop();
    await releaseDockerDaemon();
  }
  const loadAfter = loadavg();
  const rows = engines.flatMap((engine) => {
    const of = (executor: ExecutorKind, field: 'createToFirstQueryMs' | 'keyApplyMs' | 'failoverMs'): number =>
      median(samples.filter((s) => s.engine === engine && s.executor === executor).map((s) => s[field]));
    return [
      {
        engine,
        measure: 'create -> first query through the router (ms)',
        process: of('process', 'createToFirstQueryMs'),
        docker: of('docker', 'createToFirstQueryMs'),
      },
      {
        engine,
        measure: 'new service key -> first query with it through the router (ms)',
        process: of('process', 'keyApplyMs'),
        docker: of('docker', 'keyApplyMs'),
      },
      {
        engine,
        measure: 'SIGKILL of the primary -> write served (ms)',
        process: of('process', 'failoverMs'),
        docker: of('docker', 'failoverMs'),
      },
    ];
  });
  console.log(
    formatTable(
      ['engine', 'measure', 'process', 'docker', 'docker/process'],
      rows.map((r) => [
        r.engine,
        r.measure,
        formatNumber(r.process),
        formatNumber(r.docker),
        formatRatio(r.docker / r.process),
      ]),
    ),
  );
  console.log(
    `load average: ${loadBefore.map((l) => l.toFixed(2)).join(' ')} before, ${loadAfter.map((l) => l.toFixed(2)).join(' ')} after`,
  );
  const file = writeResults('docker-vs-process', { rounds, loadBefore, loadAfter, rows, samples });
  console.log(`results: ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
