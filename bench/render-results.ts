/**
 * Renders the JSON in bench/results/ as Markdown tables, for quoting the latest figures in
 * docs/benchmarks.md and in change notes without copying numbers by hand.
 *
 *   node dist/bench/render-results.js [router-DATE]
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeCpuIdle, type CpuIdleFacts } from './lib/host-facts';
import { formatNumber, formatRatio, resultsDir } from './lib/report';

interface MetricDef {
  key: string;
  label: string;
  better: 'higher' | 'lower';
}

interface RouterResults {
  date: string;
  complete: boolean;
  host: { cpus: number; cpuModel?: string; kernel: string; cpuIdle?: CpuIdleFacts };
  versions: Record<string, string>;
  settings: { rounds: number; quick: boolean };
  metrics: MetricDef[];
  targets: Array<{ name: string; relay?: string }>;
  skipped: Array<{ target: string; reason: string }>;
  medians: Record<string, Record<string, number>>;
  ratios: Array<{ target: string; reference: string; values: Record<string, number>; paired: Record<string, number> }>;
}

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(line)].join('\n');
}

function readJson<T>(name: string): T | undefined {
  const path = join(resultsDir(), `${name}.json`);
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as T) : undefined;
}

function renderRouter(r: RouterResults): string {
  const names = r.targets.map((t) => t.name);
  const out: string[] = [];
  out.push(
    `Run of ${r.date} (${r.settings.rounds} round(s)${r.settings.quick ? ', --quick' : ''}${r.complete ? '' : ', interrupted'}), ` +
      `${r.host.cpus} CPUs ${r.host.cpuModel ?? ''}, kernel ${r.host.kernel}${r.host.cpuIdle ? `, ${describeCpuIdle(r.host.cpuIdle)}` : ''}; ${r.versions.haproxy.split(' - ')[0]}; ${r.versions.redisServer.split(' ').slice(0, 3).join(' ')}; ` +
      `relay paths: ${r.targets
        .filter((t) => t.relay)
        .map((t) => `${t.name}=${t.relay}`)
        .join(', ')}.`,
    '',
    'Medians:',
    '',
    table(
      ['metric', ...names],
      r.metrics.map((m) => [m.label, ...names.map((n) => formatNumber(r.medians[n]?.[m.key]))]),
    ),
  );
  const targets = [...new Set(r.ratios.map((x) => x.target))];
  for (const target of targets) {
    const sets = r.ratios.filter((x) => x.target === target);
    out.push(
      '',
      `${target} ratios (ratio of medians; median of per-round ratios in brackets):`,
      '',
      table(
        ['metric', 'better', ...sets.map((s) => `/${s.reference}`)],
        r.metrics.map((m) => [
          m.label,
          m.better,
          ...sets.map((s) => `${formatRatio(s.values[m.key])} (${formatRatio(s.paired[m.key])})`),
        ]),
      ),
    );
  }
  for (const s of r.skipped) out.push('', `Skipped ${s.target}: ${s.reason.split('\n')[0]}`);
  return out.join('\n');
}

interface MicroResults {
  question: string;
  date: string;
  rows: Array<{ name: string; opsPerSecond: number; meanNs: number; p99Ns: number }>;
}

function renderMicro(r: MicroResults): string {
  return [
    `${r.question} (${r.date}):`,
    '',
    table(
      ['case', 'ops/s', 'mean µs', 'p99 µs'],
      r.rows.map((x) => [
        x.name,
        formatNumber(x.opsPerSecond),
        formatNumber(x.meanNs / 1e3),
        formatNumber(x.p99Ns / 1e3),
      ]),
    ),
  ].join('\n');
}

interface IdleResults {
  date: string;
  relay: string;
  settings: { workers: number; connections: number };
  connectionsHeld: number;
  perConnectionKiB: number;
  closedWhileIdle: number;
  rssMiB: { baseline: number; loaded: number; afterClose: number; extrapolatedToWanted: number };
  cycles?: Array<{ loadedMiB: number; afterCloseMiB: number }>;
  worstLoadedMiB?: number;
  goalMet: boolean;
}

function renderIdle(runs: IdleResults[]): string {
  return table(
    [
      'relay',
      'workers',
      'held',
      'RSS idle MiB',
      'RSS loaded MiB',
      'KiB/conn',
      'RSS at 10k MiB',
      'after close MiB',
      'loaded/closed per cycle MiB',
      'worst at 10k MiB',
      'dropped',
      '< 200 MB',
      'date',
    ],
    runs.map((r) => [
      r.relay,
      String(r.settings.workers),
      formatNumber(r.connectionsHeld),
      formatNumber(r.rssMiB.baseline),
      formatNumber(r.rssMiB.loaded),
      formatNumber(r.perConnectionKiB),
      formatNumber(r.rssMiB.extrapolatedToWanted),
      formatNumber(r.rssMiB.afterClose),
      (r.cycles ?? []).map((c) => `${formatNumber(c.loadedMiB)}/${formatNumber(c.afterCloseMiB)}`).join(', '),
      formatNumber(r.worstLoadedMiB),
      String(r.closedWhileIdle),
      r.goalMet ? 'yes' : 'no',
      r.date,
    ]),
  );
}

function main(): void {
  const sections: string[] = [];
  // An optional argument picks a dated run (router-2026-...), the default is the latest.
  const router = readJson<RouterResults>(process.argv[2] ?? 'router');
  if (router) sections.push(`### router-vs-haproxy\n\n${renderRouter(router)}`);
  const files = readdirSync(resultsDir()).filter((f) => f.endsWith('.json'));
  const idle = files
    .filter((f) => f.startsWith('idle-connections-'))
    .map((f) => readJson<IdleResults>(f.replace(/\.json$/, '')));
  if (idle.length > 0)
    sections.push(`### idle-connections\n\n${renderIdle(idle.filter((x): x is IdleResults => x !== undefined))}`);
  const micros = files.filter((f) => f.startsWith('micro-'));
  for (const file of micros.sort()) {
    const micro = readJson<MicroResults>(file.replace(/\.json$/, ''));
    if (micro) sections.push(`### ${file.replace(/\.json$/, '')}\n\n${renderMicro(micro)}`);
  }
  process.stdout.write(`${sections.join('\n\n')}\n`);
}

main();
