/**
 * Question: how does the router relay compare with HAProxy and with no proxy at all, on the
 * same backend, with the same clients, on this machine right now? (DESIGN.md "Targets", issues
 * 2 and 6.)
 *
 * Every target runs at once; samples alternate between targets in an order shuffled anew for each
 * measurement of each round (`--seed` replays one), so background load on a shared machine spreads
 * over all columns and no column always follows the same one (a connection row inherits the
 * previous column's sockets in TIME_WAIT). Medians and ratios are what to read, not absolute
 * numbers.
 *
 *   npm run bench:router -- [--quick] [--rounds N] [--only direct,haproxy,router-js] [--iperf-congestion ALGO]
 *                           [--storm-clients 2000] [--order shuffle|rotate] [--seed N]
 *                           [--measurements redis-p1,redis-p16,iperf,conn-rate,conn-rate-server-close,storm]
 */
import { randomInt } from 'node:crypto';
import { startBackends, redisServerVersion } from './lib/backends';
import { runConnRate, type ConnRateResult } from './lib/conn-rate';
import { haproxyVersion } from './lib/haproxy';
import { describeCpuIdle, hostFacts, type HostFacts } from './lib/host-facts';
import { iperfVersion, runIperf, type IperfResult } from './lib/iperf';
import { makeTempDir, sleep, stopAll } from './lib/processes';
import { buildNativeTool } from './lib/native-tool';
import { createPrng, shuffled } from './lib/fault-prng';
import { FlagError } from './lib/flag-error';
import { acquireRunLock } from './lib/run-lock';
import { redisBenchmarkVersion, runRedisBenchmark, type RedisBenchRow } from './lib/redis-bench';
import { formatNumber, formatRatio, formatTable, median, writeResults } from './lib/report';
import { routerCliAvailable, routerSupportsFlag } from './lib/router-process';
import { startTarget, targetThreads, type RunningTarget, type TargetSpec } from './lib/targets';

interface Settings {
  quick: boolean;
  rounds: number;
  only: string[] | undefined;
  /** `--measurements`: the measurements to run (every one by default), e.g. only the connection rows. */
  measurements: Measurement[];
  clients: number;
  requestsP1: number;
  requestsP16: number;
  iperfSeconds: number;
  /** `--iperf-congestion ALGO`: the iperf3 client's congestion control (`-C`); the system's without. */
  iperfCongestion?: string;
  connSeconds: number;
  connConcurrency: number;
  /** Clients of a reconnect storm, all connecting at once. */
  stormClients: number;
  /** Path of the built bench/native/conn-cycle-client; the Node generator when it could not be built. */
  connClient?: string;
  /**
   * `shuffle` (the default): a new order of the columns for every measurement of every round, from
   * `seed`; `rotate`: one order, rotated by one each round (runs before the shuffle were made so).
   */
  order: ColumnOrder;
  /** Seed of the shuffled orders, recorded in the results so a run's order can be replayed. */
  seed: number;
}

type ColumnOrder = 'shuffle' | 'rotate';

interface MetricDef {
  key: string;
  label: string;
  better: 'higher' | 'lower';
}

const METRICS: MetricDef[] = [
  { key: 'get_p1_rps', label: 'GET ops/s -P 1', better: 'higher' },
  { key: 'set_p1_rps', label: 'SET ops/s -P 1', better: 'higher' },
  { key: 'get_p16_rps', label: 'GET ops/s -P 16', better: 'higher' },
  { key: 'set_p16_rps', label: 'SET ops/s -P 16', better: 'higher' },
  { key: 'get_p1_p50_ms', label: 'GET p50 ms -P 1', better: 'lower' },
  { key: 'get_p1_p99_ms', label: 'GET p99 ms -P 1', better: 'lower' },
  { key: 'set_p1_p50_ms', label: 'SET p50 ms -P 1', better: 'lower' },
  { key: 'set_p1_p99_ms', label: 'SET p99 ms -P 1', better: 'lower' },
  { key: 'iperf_gbps', label: 'iperf3 Gbit/s', better: 'higher' },
  { key: 'conn_per_s', label: 'new conn/s', better: 'higher' },
  { key: 'conn_cycle_p99_ms', label: 'conn cycle p99 ms', better: 'lower' },
  // The same cycle ended by the server (PING and QUIT): no TIME_WAIT on the client's or the
  // proxy's ports, so the rate is the proxies' and not the kernel's port reuse (conn-rate.ts).
  { key: 'conn_server_close_per_s', label: 'new conn/s, server closes', better: 'higher' },
  { key: 'conn_server_close_cycle_p99_ms', label: 'cycle p99 ms, server closes', better: 'lower' },
  // A reconnect storm (a failover, a restarted fleet): every client connects at once, once. A
  // listen queue shorter than the burst drops SYNs, and a dropped client waits a 1 s retransmit.
  { key: 'storm_p50_ms', label: 'storm: p50 ms', better: 'lower' },
  { key: 'storm_last_ms', label: 'storm: last served ms', better: 'lower' },
];

type Measurement = 'redis-p1' | 'redis-p16' | 'iperf' | 'conn-rate' | 'conn-rate-server-close' | 'storm';
const MEASUREMENTS: Measurement[] = ['redis-p1', 'redis-p16', 'iperf', 'conn-rate', 'conn-rate-server-close', 'storm'];

interface RawSample {
  round: number;
  target: string;
  measurement: Measurement;
  startedAt: string;
  durationMs: number;
  result?: RedisBenchRow[] | IperfResult | ConnRateResult;
  error?: string;
}

function listOption(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function parseArgs(argv: string[]): Settings {
  const quick = argv.includes('--quick');
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const rounds = Number(value('--rounds') ?? (quick ? 1 : 3));
  if (!Number.isInteger(rounds) || rounds < 1) throw new FlagError('--rounds must be a positive integer');
  const stormClients = Number(value('--storm-clients') ?? 2000);
  if (!Number.isInteger(stormClients) || stormClients < 1)
    throw new FlagError('--storm-clients must be a positive integer');
  const measurementsText = value('--measurements');
  const measurements = measurementsText === undefined ? MEASUREMENTS : listOption(measurementsText);
  const unknownMeasurements = measurements.filter((m) => !(MEASUREMENTS as readonly string[]).includes(m));
  if (unknownMeasurements.length > 0)
    throw new FlagError(`--measurements: unknown ${unknownMeasurements.join(', ')}; known: ${MEASUREMENTS.join(', ')}`);
  const order = value('--order') ?? 'shuffle';
  if (order !== 'shuffle' && order !== 'rotate')
    throw new FlagError(`--order must be shuffle or rotate, got '${order}'`);
  const seedText = value('--seed');
  const seed = seedText === undefined ? randomInt(0, 2 ** 32) : Number(seedText);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32)
    throw new FlagError(`--seed must be an integer 0-${2 ** 32 - 1}, got '${seedText ?? ''}'`);
  return {
    quick,
    rounds,
    only: value('--only') === undefined ? undefined : listOption(value('--only') ?? ''),
    measurements: measurements as Measurement[],
    clients: 50,
    requestsP1: quick ? 5_000 : 50_000,
    requestsP16: quick ? 50_000 : 500_000,
    iperfSeconds: quick ? 1 : 4,
    ...(value('--iperf-congestion') ? { iperfCongestion: value('--iperf-congestion') } : {}),
    connSeconds: quick ? 1 : 3,
    connConcurrency: 50,
    stormClients,
    order,
    seed,
  };
}

/**
 * The full column set; `workers2` adds the two-thread/two-worker pairs, `threads` the
 * two-thread router in one process and pins the one-thread columns to `--threads 1`.
 */
function allSpecs(workers2: boolean, threads: boolean): TargetSpec[] {
  const one = threads ? 1 : undefined;
  const specs: TargetSpec[] = [
    { name: 'direct', kind: 'direct' },
    { name: 'haproxy', kind: 'haproxy', threads: 1, splice: false },
    { name: 'haproxy-splice', kind: 'haproxy', threads: 1, splice: true },
    { name: 'naive-pipe', kind: 'naive-pipe' },
    { name: 'router-js', kind: 'router', relay: 'js', workers: workers2 ? 1 : undefined, threads: one },
    { name: 'router-native', kind: 'router', relay: 'native', workers: workers2 ? 1 : undefined, threads: one },
  ];
  if (workers2) {
    specs.push(
      { name: 'haproxy-2t', kind: 'haproxy', threads: 2, splice: false },
      { name: 'haproxy-splice-2t', kind: 'haproxy', threads: 2, splice: true },
      { name: 'router-js-w2', kind: 'router', relay: 'js', workers: 2, threads: one },
      { name: 'router-native-w2', kind: 'router', relay: 'native', workers: 2, threads: one },
    );
  }
  if (threads) specs.push({ name: 'router-native-t2', kind: 'router', relay: 'native', threads: 2 });
  return specs;
}

function rotate<T>(list: readonly T[], by: number): T[] {
  const n = list.length;
  return list.map((_, i) => list[(i + by) % n]);
}

function metricsOf(
  measurement: Measurement,
  result: RedisBenchRow[] | IperfResult | ConnRateResult,
): Record<string, number> {
  switch (measurement) {
    case 'redis-p1':
    case 'redis-p16': {
      const p = measurement === 'redis-p1' ? 'p1' : 'p16';
      const out: Record<string, number> = {};
      for (const row of result as RedisBenchRow[]) {
        out[`${row.test}_${p}_rps`] = row.rps;
        if (p === 'p1') {
          out[`${row.test}_p1_p50_ms`] = row.p50Ms;
          out[`${row.test}_p1_p99_ms`] = row.p99Ms;
        }
      }
      return out;
    }
    case 'iperf':
      return { iperf_gbps: (result as IperfResult).gbitPerSecond };
    case 'conn-rate': {
      const r = result as ConnRateResult;
      return { conn_per_s: r.connectionsPerSecond, conn_cycle_p50_ms: r.p50Ms, conn_cycle_p99_ms: r.p99Ms };
    }
    case 'conn-rate-server-close': {
      const r = result as ConnRateResult;
      return {
        conn_server_close_per_s: r.connectionsPerSecond,
        conn_server_close_cycle_p50_ms: r.p50Ms,
        conn_server_close_cycle_p99_ms: r.p99Ms,
      };
    }
    case 'storm': {
      const r = result as ConnRateResult;
      return { storm_p50_ms: r.p50Ms, storm_last_ms: r.maxMs };
    }
  }
}

async function measure(
  measurement: Measurement,
  target: RunningTarget,
  s: Settings,
): Promise<RedisBenchRow[] | IperfResult | ConnRateResult> {
  const host = '127.0.0.1';
  switch (measurement) {
    case 'redis-p1':
      return runRedisBenchmark({
        host,
        port: target.redisPort,
        clients: s.clients,
        requests: s.requestsP1,
        pipeline: 1,
        tests: ['get', 'set'],
      });
    case 'redis-p16':
      return runRedisBenchmark({
        host,
        port: target.redisPort,
        clients: s.clients,
        requests: s.requestsP16,
        pipeline: 16,
        tests: ['get', 'set'],
      });
    case 'iperf':
      return runIperf({
        host,
        port: target.iperfPort,
        seconds: s.iperfSeconds,
        streams: 1,
        ...(s.iperfCongestion ? { congestion: s.iperfCongestion } : {}),
      });
    case 'conn-rate':
    case 'conn-rate-server-close':
      return runConnRate({
        host,
        port: target.redisPort,
        seconds: s.connSeconds,
        concurrency: s.connConcurrency,
        closedBy: measurement === 'conn-rate' ? 'client' : 'server',
        ...(s.connClient !== undefined ? { nativeClient: s.connClient } : {}),
      });
    case 'storm':
      // A run shorter than any cycle: each client connects once, all at the same moment.
      return runConnRate({
        host,
        port: target.redisPort,
        seconds: 1e-6,
        concurrency: s.stormClients,
        closedBy: 'server',
        ...(s.connClient !== undefined ? { nativeClient: s.connClient } : {}),
      });
  }
}

/** The HAProxy column a target is compared with: same thread count, splice or not. */
function matchingHaproxy(spec: TargetSpec, names: Set<string>, splice: boolean): string | undefined {
  const suffix = targetThreads(spec) === 2 ? '-2t' : '';
  const name = `haproxy${splice ? '-splice' : ''}${suffix}`;
  return names.has(name) ? name : undefined;
}

interface RatioSet {
  target: string;
  reference: string;
  /** Ratio of the medians. */
  values: Record<string, number>;
  /**
   * Median of the per-round ratios: samples of one round were taken minutes apart at most, so
   * this pairing cancels slow drifts in background load that the ratio of medians keeps.
   */
  paired: Record<string, number>;
  /** The lowest and highest per-round ratio: how far one round's verdict can move. */
  spread: Record<string, [number, number]>;
}

/** Metric values of one target per round, rebuilt from the raw samples. */
function valuesByRound(raw: readonly RawSample[], target: string): Map<number, Record<string, number>> {
  const out = new Map<number, Record<string, number>>();
  for (const sample of raw) {
    if (sample.target !== target || !sample.result) continue;
    out.set(sample.round, { ...out.get(sample.round), ...metricsOf(sample.measurement, sample.result) });
  }
  return out;
}

function computeRatios(
  running: RunningTarget[],
  medians: Record<string, Record<string, number>>,
  raw: readonly RawSample[],
): RatioSet[] {
  const names = new Set(running.map((t) => t.spec.name));
  const out: RatioSet[] = [];
  for (const t of running) {
    if (t.spec.kind === 'direct' || t.spec.kind === 'haproxy') continue;
    const refs = [
      names.has('direct') ? 'direct' : undefined,
      matchingHaproxy(t.spec, names, false),
      matchingHaproxy(t.spec, names, true),
    ];
    for (const ref of refs) {
      if (!ref) continue;
      const values: Record<string, number> = {};
      const paired: Record<string, number> = {};
      const spread: Record<string, [number, number]> = {};
      const mine = valuesByRound(raw, t.spec.name);
      const theirs = valuesByRound(raw, ref);
      for (const m of METRICS) {
        values[m.key] = medians[t.spec.name][m.key] / medians[ref][m.key];
        const perRound: number[] = [];
        for (const [round, v] of mine) {
          const r = theirs.get(round)?.[m.key];
          if (v[m.key] !== undefined && r !== undefined) perRound.push(v[m.key] / r);
        }
        paired[m.key] = median(perRound);
        spread[m.key] = perRound.length > 0 ? [Math.min(...perRound), Math.max(...perRound)] : [Number.NaN, Number.NaN];
      }
      out.push({ target: t.spec.name, reference: ref, values, paired, spread });
    }
  }
  return out;
}

/**
 * Whether a ratio meets the goal for its row: throughput at least the reference's (HAProxy) or
 * within 10% of it (direct); latency no worse by the same margins.
 */
function goalMet(metric: MetricDef, ratio: number, reference: string): boolean {
  const slack = reference === 'direct' ? 0.1 : 0;
  return metric.better === 'higher' ? ratio >= 1 - slack : ratio <= 1 + slack;
}

async function main(): Promise<void> {
  const settings = parseArgs(process.argv.slice(2));
  const workers2 = await routerSupportsFlag('--workers');
  let specs = allSpecs(workers2, await routerSupportsFlag('--threads'));
  if (settings.only) {
    const wanted = new Set(settings.only);
    const unknown = [...wanted].filter((n) => !specs.some((s) => s.name === n));
    if (unknown.length > 0)
      throw new FlagError(
        `--only: unknown target(s) ${unknown.join(', ')}; known: ${specs.map((s) => s.name).join(', ')}`,
      );
    specs = specs.filter((s) => wanted.has(s.name));
  }

  await acquireRunLock('router-vs-haproxy');
  // The C generator spends less CPU per connection than Node's, which leaves more of the two
  // cores to the proxy under test; both run the same cycles.
  const connClient = await buildNativeTool('conn-cycle-client', makeTempDir('sf-bench-conn-'));
  if (connClient.ok) settings.connClient = connClient.path;
  else process.stderr.write(`conn-cycle-client not built (${connClient.reason}); new connections from Node\n`);
  const backends = await startBackends();
  const running: RunningTarget[] = [];
  const skipped: Array<{ target: string; reason: string }> = [];
  for (const spec of specs) {
    const started = await startTarget(spec, backends);
    if (started.ok) running.push(started.target);
    else skipped.push({ target: spec.name, reason: started.reason });
  }
  if (!workers2) {
    skipped.push({
      target: 'router-*-w2',
      reason: routerCliAvailable() ? '`sf router --help` has no --workers yet' : 'router CLI not built',
    });
  }
  for (const s of skipped) process.stderr.write(`skipped ${s.target}: ${s.reason}\n`);

  const versions = {
    haproxy: await haproxyVersion(),
    redisServer: await redisServerVersion(),
    redisBenchmark: await redisBenchmarkVersion(),
    iperf3: await iperfVersion(),
    node: process.version,
  };
  const samples: Record<string, Record<string, number[]>> = {};
  for (const t of running) samples[t.spec.name] = {};
  const raw: RawSample[] = [];
  const startedAt = new Date().toISOString();

  const snapshot = (complete: boolean): Record<string, unknown> => {
    const medians: Record<string, Record<string, number>> = {};
    for (const t of running) {
      medians[t.spec.name] = {};
      for (const [key, values] of Object.entries(samples[t.spec.name])) medians[t.spec.name][key] = median(values);
    }
    const ratios = computeRatios(running, medians, raw);
    return {
      benchmark: 'router-vs-haproxy',
      complete,
      date: startedAt,
      finishedAt: complete ? new Date().toISOString() : undefined,
      host: hostFacts(),
      versions,
      settings,
      metrics: METRICS,
      targets: running.map((t) => ({ name: t.spec.name, spec: t.spec, ...t.info })),
      skipped,
      medians,
      ratios: ratios.map((r) => ({ name: `${r.target}/${r.reference}`, ...r })),
      samples,
      raw,
    };
  };

  const prng = createPrng(settings.seed);
  process.stderr.write(
    `column order: ${settings.order}${settings.order === 'shuffle' ? ` (--seed ${settings.seed})` : ''}\n`,
  );
  for (let round = 0; round < settings.rounds; round++) {
    process.stderr.write(`round ${round + 1}/${settings.rounds}\n`);
    for (const measurement of settings.measurements) {
      const columns = settings.order === 'shuffle' ? shuffled(running, prng) : rotate(running, round % running.length);
      for (const target of columns) {
        const t0 = Date.now();
        const sample: RawSample = {
          round,
          target: target.spec.name,
          measurement,
          startedAt: new Date(t0).toISOString(),
          durationMs: 0,
        };
        try {
          if (target.proc && target.proc.child.exitCode !== null)
            throw new Error(`${target.spec.name} exited:\n${target.proc.output().slice(-2000)}`);
          const result = await measure(measurement, target, settings);
          sample.result = result;
          for (const [key, value] of Object.entries(metricsOf(measurement, result))) {
            (samples[target.spec.name][key] ??= []).push(value);
          }
        } catch (err) {
          sample.error = String(err).slice(0, 2000);
          process.stderr.write(`  ${target.spec.name} ${measurement}: ${sample.error.split('\n')[0]}\n`);
        }
        sample.durationMs = Date.now() - t0;
        raw.push(sample);
        // Let sockets in TIME_WAIT and the previous target's CPU burst settle between samples.
        await sleep(200);
      }
      process.stderr.write(`  ${measurement}: ${columns.map((t) => t.spec.name).join(' → ')}\n`);
    }
    // Written after every round so an interrupted run still leaves its samples behind.
    writeResults('router', snapshot(false));
  }

  const result = snapshot(true);
  const path = writeResults('router', result);
  // router.json is the latest run, which the next run (or someone else's) replaces; a dated copy
  // keeps every complete run's raw samples.
  writeResults(`router-${startedAt.replace(/[:.]/g, '-')}`, result);
  printReport(result, running, raw);
  process.stdout.write(`\nresults: ${path}\n`);
}

function printReport(result: Record<string, unknown>, running: RunningTarget[], raw: readonly RawSample[]): void {
  const medians = result.medians as Record<string, Record<string, number>>;
  const ratios = computeRatios(running, medians, raw);
  const names = running.map((t) => t.spec.name);
  // Rows of measurements this run left out (`--measurements`) are not printed.
  const shown = METRICS.filter((m) => names.some((n) => medians[n][m.key] !== undefined));
  const relayNote = running
    .filter((t) => t.spec.kind === 'router')
    .map((t) => `${t.spec.name}: relay=${String(t.info.relay)}`);
  const settings = result.settings as Settings;
  const generator = settings.connClient !== undefined ? 'bench/native/conn-cycle-client.c' : 'Node';
  const host = result.host as HostFacts;
  process.stdout.write(
    `\nMedians (${settings.rounds} round(s)); ${relayNote.join(', ') || 'no router column'}; new connections from ${generator}; ${describeCpuIdle(host.cpuIdle)}\n\n`,
  );
  process.stdout.write(
    `${formatTable(
      ['metric', ...names],
      shown.map((m) => [m.label, ...names.map((n) => formatNumber(medians[n][m.key]))]),
    )}\n`,
  );
  const byTarget = new Map<string, RatioSet[]>();
  for (const r of ratios) byTarget.set(r.target, [...(byTarget.get(r.target) ?? []), r]);
  for (const [target, sets] of byTarget) {
    process.stdout.write(
      `\nRatios for ${target} (value / reference; * = goal missed on this row; in brackets the lowest and highest per-round ratio)\n\n`,
    );
    process.stdout.write(
      `${formatTable(
        ['metric', 'better', ...sets.map((s) => `/${s.reference}`)],
        shown.map((m) => [
          m.label,
          m.better,
          ...sets.map((s) => {
            const v = s.values[m.key];
            const [lo, hi] = s.spread[m.key];
            const range = Number.isNaN(lo) || lo === hi ? '' : ` [${formatRatio(lo)}-${formatRatio(hi)}]`;
            return `${formatRatio(v)}${Number.isNaN(v) || goalMet(m, v, s.reference) ? ' ' : '*'}${range}`;
          }),
        ]),
      )}\n`,
    );
  }
  for (const s of result.skipped as Array<{ target: string; reason: string }>)
    process.stdout.write(`\nskipped ${s.target}: ${s.reason}`);
  process.stdout.write('\n');
}

main()
  .catch((err: unknown) => {
    if (err instanceof FlagError) {
      process.stderr.write(`router-vs-haproxy: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
