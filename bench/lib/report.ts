/**
 * Turning samples into what a reader compares: medians, ratios, a fixed-width table on stdout,
 * and a JSON file under bench/results/ that keeps every raw sample.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function formatNumber(value: number | undefined): string {
  if (value === undefined || Number.isNaN(value)) return '-';
  const abs = Math.abs(value);
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US');
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

export function formatRatio(value: number | undefined): string {
  if (value === undefined || Number.isNaN(value)) return '-';
  return `${value.toFixed(2)}x`;
}

/** Renders rows of cells as a table with a header rule; the first column is left-aligned. */
export function formatTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** bench/results/ in the source tree, whether running from bench/ or from dist/bench/. */
export function resultsDir(): string {
  const fromDist = __dirname.split('/').includes('dist');
  return fromDist ? join(__dirname, '..', '..', '..', 'bench', 'results') : join(__dirname, '..', 'results');
}

/** Writes `data` as pretty JSON to bench/results/NAME.json and returns the path. */
export function writeResults(name: string, data: unknown): string {
  const path = join(resultsDir(), `${name}.json`);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(data, null, 2)}\n`);
  return path;
}
