/**
 * Does failover keep its promises on every path? Runs a seeded schedule of K faults against a
 * live platform (three cells, a Redis and a PostgreSQL service with one replica each,
 * `durability: sync`, writers through the router) and checks the invariants of
 * bench/lib/fault-checker.ts after each fault. Prints every violation with its seed and step,
 * then a table of recovery time and failed writes per fault kind, and writes
 * bench/results/fault-schedule-<seed>.json.
 *
 *   node dist/bench/fault-schedule.js --seed 7 --faults 20 [--engines redis,postgres]
 *     [--kinds engine-kill,cell-kill,...] [--recovery-bound-ms 10000] [--log-dir DIR]
 *     [--log-level info] [--list]
 *
 * Exit code 0 with no violation, 1 with any (or when the run could not start), 2 for bad flags.
 */
import { defaultFaultKinds, FAULT_KINDS, faultKindsByName } from './lib/fault-kinds';
import { runFaultSchedule, type CheckerResult } from './lib/fault-checker';
import type { EngineName } from './lib/fault-writers';
import { formatNumber, formatTable, writeResults } from './lib/report';
import { acquireRunLock } from './lib/run-lock';

interface Flags {
  seed: number;
  faults: number;
  engines: EngineName[];
  kinds: string[] | undefined;
  list: boolean;
  logDir: string;
  logLevel: string;
  recoveryBoundMs: number;
}

function usage(message: string): never {
  process.stderr.write(`fault-schedule: ${message}\n`);
  process.exit(2);
}

function parseFlags(argv: string[]): Flags {
  const flags: Flags = {
    seed: Date.now() % 100_000,
    faults: 10,
    engines: ['redis', 'postgres'],
    kinds: undefined,
    list: false,
    logDir: '',
    logLevel: 'warn',
    recoveryBoundMs: 10_000,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): string => argv[++i] ?? usage(`${arg} needs a value`);
    if (arg === '--seed') flags.seed = Number(value());
    else if (arg === '--faults') flags.faults = Number(value());
    else if (arg === '--engines') flags.engines = value().split(',') as EngineName[];
    else if (arg === '--kinds') flags.kinds = value().split(',');
    else if (arg === '--list') flags.list = true;
    else if (arg === '--log-dir') flags.logDir = value();
    else if (arg === '--log-level') flags.logLevel = value();
    else if (arg === '--recovery-bound-ms') flags.recoveryBoundMs = Number(value());
    else usage(`unknown flag ${arg}`);
  }
  if (!Number.isInteger(flags.seed) || flags.seed < 0) usage('--seed must be a non-negative integer');
  if (!Number.isInteger(flags.faults) || flags.faults < 1 || flags.faults > 1_000)
    usage('--faults must be an integer 1-1000');
  if (!Number.isInteger(flags.recoveryBoundMs) || flags.recoveryBoundMs < 1)
    usage('--recovery-bound-ms must be a positive integer');
  for (const e of flags.engines)
    if (e !== 'redis' && e !== 'postgres') usage(`--engines: unknown engine '${e}' (redis, postgres)`);
  return flags;
}

function render(result: CheckerResult): string {
  const ms = (v: number | null): string => (v === null ? '-' : formatNumber(v));
  const table = formatTable(
    [
      'fault kind',
      'engine',
      'faults',
      'recovery p50 ms',
      'p99 ms',
      'max ms',
      'failed writes',
      'per fault',
      'violations',
    ],
    result.summary.map((r) => [
      r.kind,
      r.engine,
      String(r.faults),
      ms(r.recoveryP50Ms),
      ms(r.recoveryP99Ms),
      ms(r.recoveryMaxMs),
      String(r.failedWrites),
      formatNumber(r.failedWritesPerFault),
      String(r.violations),
    ]),
  );
  const acked = Object.entries(result.acknowledged)
    .map(([name, n]) => `${name} ${n} acknowledged, ${result.failedWrites[name] ?? 0} failed attempts`)
    .join('; ');
  const byInvariant = new Map<string, number>();
  for (const v of result.violations) byInvariant.set(v.invariant, (byInvariant.get(v.invariant) ?? 0) + 1);
  const verdict =
    result.violations.length === 0
      ? '0 violations'
      : `${result.violations.length} violations: ${[...byInvariant].map(([k, n]) => `${k} ${n}`).join(', ')}`;
  return [
    '',
    `seed ${result.seed}, ${result.steps.length}/${result.faults} faults, ${(result.durationMs / 1000).toFixed(0)} s; ${acked}`,
    '',
    table,
    '',
    verdict,
    ...result.violations.map(
      (v) => `  seed=${v.seed} step=${v.step} ${v.fault} ${v.invariant} ${v.service ?? ''}: ${v.details}`,
    ),
    result.aborted ? `\nrun aborted: ${result.aborted.error}` : '',
  ].join('\n');
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  if (flags.list) {
    for (const k of FAULT_KINDS)
      console.log(`${k.name.padEnd(22)} ${k.description}${k.optIn ? ` [opt-in: ${k.optIn}]` : ''}`);
    return;
  }
  let kinds;
  try {
    kinds = flags.kinds ? faultKindsByName(flags.kinds) : defaultFaultKinds();
  } catch (err) {
    usage((err as Error).message);
  }
  await acquireRunLock('fault-schedule');
  console.log(
    `fault schedule: seed ${flags.seed}, ${flags.faults} faults, engines ${flags.engines.join(',')}, kinds ${kinds.map((k) => k.name).join(',')}`,
  );
  const result = await runFaultSchedule({
    seed: flags.seed,
    faults: flags.faults,
    engines: flags.engines,
    kinds,
    recoveryBoundMs: flags.recoveryBoundMs,
    platform: { logDir: flags.logDir, logLevel: flags.logLevel },
  });
  console.log(render(result));
  const file = writeResults(`fault-schedule-${flags.seed}`, result);
  console.log(`\nwrote ${file}`);
  process.exit(result.violations.length === 0 && !result.aborted ? 0 : 1);
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
