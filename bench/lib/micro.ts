/**
 * The shared shape of the tinybench micro benchmarks: run a few cases of one question, print a
 * table, write bench/results/micro-NAME.json. `--quick` shortens every case for CI smoke runs.
 */
import { Bench } from 'tinybench';
import { cpus } from 'node:os';
import { formatNumber, formatTable, writeResults } from './report';

export interface MicroCase {
  name: string;
  fn: () => unknown;
}

export interface MicroRow {
  name: string;
  opsPerSecond: number;
  meanNs: number;
  p50Ns: number;
  p99Ns: number;
  rmePercent: number;
  samples: number;
}

/**
 * Keeps results alive so the optimizer cannot drop a call whose value is never used; cases
 * return their result and it lands here.
 */
let sink: unknown;

export function keep(value: unknown): void {
  sink = value;
}

/** Cases range from nanoseconds (a balancer pick) to hundreds of milliseconds (a 10k table). */
function formatDuration(ns: number): string {
  if (ns >= 1e6) return `${formatNumber(ns / 1e6)} ms`;
  if (ns >= 1e3) return `${formatNumber(ns / 1e3)} µs`;
  return `${formatNumber(ns)} ns`;
}

export async function runMicro(name: string, question: string, cases: readonly MicroCase[]): Promise<MicroRow[]> {
  const quick = process.argv.includes('--quick');
  const bench = new Bench({ name, time: quick ? 100 : 1000, warmupTime: quick ? 20 : 200 });
  for (const c of cases) bench.add(c.name, () => keep(c.fn()));
  await bench.run();
  const rows: MicroRow[] = [];
  for (const task of bench.tasks) {
    const r = task.result;
    if (r.state === 'errored') throw r.error;
    if (r.state !== 'completed') throw new Error(`${task.name}: ${r.state}`);
    rows.push({
      name: task.name,
      // From the mean latency: tinybench's throughput mean averages per-sample rates, which
      // overstates fast cases whose samples hit the timer resolution.
      opsPerSecond: 1000 / r.latency.mean,
      meanNs: r.latency.mean * 1e6,
      p50Ns: r.latency.p50 * 1e6,
      p99Ns: r.latency.p99 * 1e6,
      rmePercent: r.latency.rme,
      samples: r.latency.samplesCount,
    });
  }
  process.stdout.write(`\n${question}\n\n`);
  process.stdout.write(
    `${formatTable(
      ['case', 'ops/s', 'mean', 'p50', 'p99', '±%', 'samples'],
      rows.map((r) => [
        r.name,
        formatNumber(r.opsPerSecond),
        formatDuration(r.meanNs),
        formatDuration(r.p50Ns),
        formatDuration(r.p99Ns),
        r.rmePercent.toFixed(1),
        String(r.samples),
      ]),
    )}\n`,
  );
  const path = writeResults(`micro-${name}`, {
    benchmark: `micro-${name}`,
    question,
    date: new Date().toISOString(),
    quick,
    node: process.version,
    cpu: cpus()[0]?.model,
    rows,
  });
  process.stdout.write(`\nresults: ${path}\n`);
  void sink;
  return rows;
}
