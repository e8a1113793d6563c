/**
 * Cloud Foundry's `reservable_ports` notation: comma-separated ports and inclusive ranges,
 * e.g. `"16000-16999"` or `"1024-1100, 5000"`.
 */
import { invalid } from '../../common';

/** @default '16000-16999': route ports of the default router group (DESIGN.md) */
export const DEFAULT_RESERVABLE_PORTS = '16000-16999';

export type PortRange = readonly [low: number, high: number];

export function parsePortRanges(text: string, field = 'reservable_ports'): PortRange[] {
  const ranges: PortRange[] = [];
  for (const part of text.split(',')) {
    const m = /^\s*(\d{1,5})(?:\s*-\s*(\d{1,5}))?\s*$/.exec(part);
    if (!m) throw invalid(field, `must be ports or ranges like '16000-16999', got '${part.trim()}'`);
    const low = Number(m[1]);
    const high = m[2] === undefined ? low : Number(m[2]);
    if (low < 1 || high > 65535 || low > high) {
      throw invalid(field, `range '${part.trim()}' must lie within 1-65535 with low <= high`);
    }
    ranges.push([low, high]);
  }
  return ranges;
}

export function rangesContain(ranges: readonly PortRange[], port: number): boolean {
  return ranges.some(([low, high]) => port >= low && port <= high);
}

/** The first port both sets share, or null. */
export function rangesOverlap(a: readonly PortRange[], b: readonly PortRange[]): number | null {
  for (const [al, ah] of a) {
    for (const [bl, bh] of b) {
      if (al <= bh && bl <= ah) return Math.max(al, bl);
    }
  }
  return null;
}
