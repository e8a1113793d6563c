/**
 * Question: when every client reconnects at once to a process started a moment before (a router
 * restarted, a replica just promoted), how soon is the last one served, through the router and
 * through HAProxy, and what does growing the descriptor table at start change?
 *
 * Each sample starts its column's process fresh, lets CLIENTS connections (bench/native/
 * storm-hold-client.c: connect, PING, keep the connection) hit it at once, and stops it. Proxy
 * columns relay to one redis-server started, grown and warmed by one storm before the rounds, so
 * only the proxy is fresh; the `redis` columns are a fresh redis-server each, as the kernel
 * starts it and as cells start it (cell/engine-fd-table.ts). Columns are shuffled every round.
 * `TcpExtListenOverflows` (host-wide, nothing else runs) counts the SYNs a full queue dropped.
 *
 *   node dist/bench/first-storm.js [--rounds 4] [--clients 4000] [--only router-t2,haproxy-2t] [--seed N]
 */
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startRedis } from './lib/backends';
import { createPrng, shuffled } from './lib/fault-prng';
import { FlagError } from './lib/flag-error';
import { startHaproxy } from './lib/haproxy';
import { hostFacts } from './lib/host-facts';
import { buildNativeTool } from './lib/native-tool';
import {
  freePort,
  hardFileLimit,
  makeTempDir,
  runToCompletion,
  sleep,
  stopAll,
  type ManagedProcess,
} from './lib/processes';
import { formatNumber, formatRatio, formatTable, median, writeResults } from './lib/report';
import { acquireRunLock } from './lib/run-lock';
import { startRouter } from './lib/router-process';

interface Settings {
  rounds: number;
  clients: number;
  only: string[] | undefined;
  seed: number;
}

interface Column {
  name: string;
  /** Starts the column's process fresh; returns it and the port clients connect to. */
  start(backendPort: number, clients: number): Promise<{ proc: ManagedProcess; port: number }>;
}

interface StormResult {
  clients: number;
  served: number;
  failed: number;
  unanswered: number;
  p50Ms: number;
  lastMs: number;
}

interface Sample {
  round: number;
  column: string;
  result?: StormResult & { listenOverflows: number };
  error?: string;
}

async function freshRedis(growTable: boolean, clients: number): Promise<{ proc: ManagedProcess; port: number }> {
  const port = await freePort();
  return { proc: await startRedis(port, { maxClients: clients + 100, growTable }), port };
}

function proxied(
  port: number,
  backendPort: number,
): Array<{ name: string; listenPort: number; targetHost: string; targetPort: number }> {
  return [{ name: 'redis', listenPort: port, targetHost: '127.0.0.1', targetPort: backendPort }];
}

const COLUMNS: Column[] = [
  { name: 'redis', start: (_, clients) => freshRedis(false, clients) },
  { name: 'redis-grown', start: (_, clients) => freshRedis(true, clients) },
  ...[1, 2].map((threads): Column => ({
    name: threads === 1 ? 'haproxy' : 'haproxy-2t',
    start: async (backendPort, clients) => {
      const port = await freePort();
      const proc = await startHaproxy('haproxy', {
        services: proxied(port, backendPort),
        threads,
        splice: false,
        maxconn: clients + 100,
      });
      return { proc, port };
    },
  })),
  ...[
    { name: 'router', threads: 1, reserve: true },
    { name: 'router-t2', threads: 2, reserve: true },
    { name: 'router-t2-unreserved', threads: 2, reserve: false },
  ].map((c): Column => ({
    name: c.name,
    start: async (backendPort) => {
      const port = await freePort();
      const router = await startRouter(c.name, {
        services: proxied(port, backendPort),
        relay: 'native',
        threads: c.threads,
        env: c.reserve ? {} : { SF_ROUTER_FD_RESERVE: 'off' },
      });
      return { proc: router.proc, port };
    },
  })),
];

/** Comparisons printed as ratios (first / second): lower is better for both figures. */
const PAIRS: Array<[string, string]> = [
  ['router', 'haproxy'],
  ['router-t2', 'haproxy-2t'],
  ['router-t2', 'router-t2-unreserved'],
  ['redis-grown', 'redis'],
];

function parseArgs(argv: string[]): Settings {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const text = value(name);
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new FlagError(`${name} must be an integer ${min}-${max}, got '${text ?? ''}'`);
    return n;
  };
  const only = value('--only')
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = (only ?? []).filter((n) => !COLUMNS.some((c) => c.name === n));
  if (unknown.length > 0)
    throw new FlagError(
      `--only: unknown column(s) ${unknown.join(', ')}; known: ${COLUMNS.map((c) => c.name).join(', ')}`,
    );
  return {
    rounds: integer('--rounds', 4, 1, 1000),
    // Within the 4,096 a listen queue holds by default, so a column's drops come from its stalls;
    // a storm twice the queue (--clients 8000) is marginal for every column (docs/benchmarks.md).
    clients: integer('--clients', 4000, 1, 1_000_000),
    only,
    seed: integer('--seed', randomInt(0, 2 ** 32), 0, 2 ** 32 - 1),
  };
}

/** TcpExt ListenOverflows from /proc/net/netstat (host-wide). */
function listenOverflows(): number {
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
  for (let i = 0; i + 1 < lines.length; i++) {
    if (!lines[i].startsWith('TcpExt:')) continue;
    const names = lines[i].split(/\s+/);
    const values = lines[i + 1].split(/\s+/);
    const at = names.indexOf('ListenOverflows');
    if (at > 0) return Number(values[at]);
  }
  return 0;
}

async function storm(client: string, port: number, clients: number): Promise<StormResult> {
  const r = await runToCompletion('storm-hold-client', client, ['127.0.0.1', String(port), String(clients), '30'], {
    timeoutMs: 60_000,
  });
  if (r.code !== 0) throw new Error(`storm-hold-client exited ${r.code}: ${r.stderr.slice(0, 500)}`);
  return JSON.parse(r.stdout) as StormResult;
}

async function main(): Promise<void> {
  const settings = parseArgs(process.argv.slice(2));
  const columns = settings.only ? COLUMNS.filter((c) => settings.only!.includes(c.name)) : COLUMNS;
  // Every client holds a descriptor in the client, and two in a proxy: all must fit the limit.
  const hard = await hardFileLimit();
  if (2 * settings.clients + 200 > hard)
    throw new FlagError(
      `--clients ${settings.clients} needs a hard RLIMIT_NOFILE of ${2 * settings.clients + 200}, this one is ${hard}`,
    );
  await acquireRunLock('first-storm');
  const built = await buildNativeTool('storm-hold-client', makeTempDir('sf-bench-storm-'));
  if (!built.ok) throw new Error(`storm-hold-client not built: ${built.reason}`);
  // The proxies' backend: grown and warmed once, so only the proxy under test is fresh.
  const backend = await freshRedis(true, settings.clients);
  await storm(built.path, backend.port, settings.clients);

  const prng = createPrng(settings.seed);
  const samples: Sample[] = [];
  const startedAt = new Date().toISOString();
  process.stderr.write(`seed ${settings.seed}, ${settings.clients} clients a storm\n`);
  for (let round = 0; round < settings.rounds; round++) {
    const order = shuffled(columns, prng);
    process.stderr.write(`round ${round + 1}/${settings.rounds}: ${order.map((c) => c.name).join(' → ')}\n`);
    for (const column of order) {
      const sample: Sample = { round, column: column.name };
      let proc: ManagedProcess | undefined;
      try {
        const started = await column.start(backend.port, settings.clients);
        proc = started.proc;
        await sleep(300);
        const before = listenOverflows();
        const result = await storm(built.path, started.port, settings.clients);
        sample.result = { ...result, listenOverflows: listenOverflows() - before };
      } catch (err) {
        sample.error = String(err).slice(0, 2000);
        process.stderr.write(`  ${column.name}: ${sample.error.split('\n')[0]}\n`);
      } finally {
        await proc?.stop();
      }
      samples.push(sample);
      // The clients' ports leave TIME_WAIT to the next column's new port; a breath for the CPU.
      await sleep(500);
    }
  }

  const of = (column: string, pick: (r: StormResult & { listenOverflows: number }) => number): number[] =>
    samples.filter((s) => s.column === column && s.result).map((s) => pick(s.result!));
  const medians: Record<string, { p50Ms: number; lastMs: number; listenOverflows: number; unserved: number }> = {};
  for (const c of columns) {
    medians[c.name] = {
      p50Ms: median(of(c.name, (r) => r.p50Ms)),
      lastMs: median(of(c.name, (r) => r.lastMs)),
      listenOverflows: median(of(c.name, (r) => r.listenOverflows)),
      unserved: median(of(c.name, (r) => r.failed + r.unanswered)),
    };
  }
  const names = new Set(columns.map((c) => c.name));
  const ratios = PAIRS.filter(([a, b]) => names.has(a) && names.has(b)).map(([a, b]) => ({
    name: `${a}/${b}`,
    p50: medians[a].p50Ms / medians[b].p50Ms,
    last: medians[a].lastMs / medians[b].lastMs,
  }));
  const result = {
    benchmark: 'first-storm',
    date: startedAt,
    finishedAt: new Date().toISOString(),
    host: hostFacts(),
    settings,
    medians,
    ratios,
    samples,
  };
  const path = writeResults('first-storm', result);
  // first-storm.json is the latest run; a dated copy keeps every run's samples.
  writeResults(`first-storm-${startedAt.replace(/[:.]/g, '-')}`, result);
  process.stdout.write(
    `\nMedians of ${settings.rounds} round(s), ${settings.clients} clients connecting at once to a process started 0.3 s before\n\n`,
  );
  process.stdout.write(
    `${formatTable(
      ['column', 'p50 ms', 'last served ms', 'listen overflows', 'not served', 'last served, each round'],
      columns.map((c) => [
        c.name,
        formatNumber(medians[c.name].p50Ms),
        formatNumber(medians[c.name].lastMs),
        formatNumber(medians[c.name].listenOverflows),
        formatNumber(medians[c.name].unserved),
        of(c.name, (r) => r.lastMs)
          .map((v) => v.toFixed(0))
          .join(' '),
      ]),
    )}\n`,
  );
  if (ratios.length > 0) {
    process.stdout.write('\nRatios (lower is better)\n\n');
    process.stdout.write(
      `${formatTable(
        ['columns', 'p50', 'last served'],
        ratios.map((r) => [r.name, formatRatio(r.p50), formatRatio(r.last)]),
      )}\n`,
    );
  }
  process.stdout.write(`\nresults: ${path}\n`);
}

main()
  .catch((err: unknown) => {
    if (err instanceof FlagError) {
      process.stderr.write(`first-storm: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
