/**
 * Does failover keep its promises on every path? Runs a seeded schedule of K faults against a
 * live platform (three cells, a Redis and a PostgreSQL service with one replica each,
 * `durability: sync`, writers through the router) and checks the invariants of
 * bench/lib/fault-checker.ts after each fault. Prints every violation with its seed and step,
 * then a table of recovery time and failed writes per fault kind, and writes
 * bench/results/fault-schedule-<seed>.json.
 *
 *   node dist/bench/fault-schedule.js --seed 7 --faults 20 [--engines redis,postgres]
 *     [--kinds engine-kill,cell-kill,...] [--platform processes|sf-up] [--recovery-bound-ms 10000]
 *     [--log-dir DIR] [--log-level info] [--list]
 *
 * `--platform processes` (the default) starts the state redis, control, router and cells one by
 * one and restarts them itself; `--platform sf-up` runs one real `sf up` whose supervisor restarts
 * what a fault kills, and adds the `sf-up-restart` fault (Ctrl-C, then `sf up` again). Kinds that
 * cannot run on the chosen platform (`cell-partition` needs a cell in a network namespace) are
 * refused with exit 2.
 *
 * Exit code 0 with no violation, 1 with any (or when the run could not start), 2 for bad flags.
 */
import { FAULT_KINDS } from './lib/fault-kinds';
import { runFaultSchedule, type CheckerResult } from './lib/fault-checker';
import { FlagError, parseFaultFlags, type FaultFlags } from './lib/fault-flags';
import { formatNumber, formatTable, writeResults } from './lib/report';
import { acquireRunLock } from './lib/run-lock';

function parseFlags(argv: string[]): FaultFlags {
  try {
    return parseFaultFlags(argv);
  } catch (err) {
    if (!(err instanceof FlagError)) throw err;
    process.stderr.write(`fault-schedule: ${err.message}\n`);
    process.exit(2);
  }
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
      'volumes deleted',
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
      String(r.volumesDeleted),
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
  const loads = result.steps.map((s) => s.load1);
  const load = loads.length ? `load average ${Math.min(...loads)}-${Math.max(...loads)} at the faults` : '';
  return [
    '',
    `${load}`,
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
      console.log(
        `${k.name.padEnd(22)} ${k.description}${k.optIn ? ` [opt-in: ${k.optIn}]` : ''}${k.platforms ? ` [platform: ${k.platforms.join(', ')}]` : ''}`,
      );
    return;
  }
  const kinds = flags.kinds;
  await acquireRunLock('fault-schedule');
  console.log(
    `fault schedule: platform ${flags.platform}, seed ${flags.seed}, ${flags.faults} faults, engines ${flags.engines.join(',')}, kinds ${kinds.map((k) => k.name).join(',')}`,
  );
  const result = await runFaultSchedule({
    seed: flags.seed,
    faults: flags.faults,
    engines: flags.engines,
    kinds,
    recoveryBoundMs: flags.recoveryBoundMs,
    platformMode: flags.platform,
    platform: { logDir: flags.logDir, logLevel: flags.logLevel },
  });
  console.log(render(result));
  const file = writeResults(
    flags.platform === 'processes' ? `fault-schedule-${flags.seed}` : `fault-schedule-${flags.platform}-${flags.seed}`,
    result,
  );
  console.log(`\nwrote ${file}`);
  process.exit(result.violations.length === 0 && !result.aborted ? 0 : 1);
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
