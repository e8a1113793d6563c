/**
 * Cloud Foundry's `reservable_ports` notation: comma-separated ports and inclusive ranges,
 * e.g. `"16000-16999"` or `"1024-1100, 5000"`.
 */
import { invalid } from '../../common';

/** @default '16000-16999': route ports of the default router group (DESIGN.md) */
export const DEFAULT_RESERVABLE_PORTS = '16000-16999';

export type PortRange = readonly [low: number, high: number];

/** Cloud Foundry's lowest reservable port: ports below are the system's (routing-api's validator). */
export const MIN_RESERVABLE_PORT = 1024;

/** An empty text (an `http` router group's) has no ports. */
export function parsePortRanges(text: string, field = 'reservable_ports'): PortRange[] {
  const ranges: PortRange[] = [];
  if (text.trim() === '') return ranges;
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

/**
 * Cloud Foundry's rules for a group's own ports (routing-api `ReservablePorts.Validate`): every
 * port within 1024-65535 and no two ranges of the group overlapping.
 */
export function parseReservablePorts(text: string, field = 'reservable_ports'): PortRange[] {
  const ranges = parsePortRanges(text, field);
  if (ranges.length === 0) throw invalid(field, "must name ports or ranges like '16000-16999'");
  for (const [low, high] of ranges) {
    if (low < MIN_RESERVABLE_PORT) {
      throw invalid(
        field,
        `ports must lie within ${MIN_RESERVABLE_PORT}-65535, got ${low}${low === high ? '' : `-${high}`}`,
      );
    }
  }
  for (let i = 0; i < ranges.length; i++) {
    const port = rangesOverlap([ranges[i]], ranges.slice(i + 1));
    if (port !== null) throw invalid(field, `ranges overlap at port ${port}`);
  }
  return ranges;
}
