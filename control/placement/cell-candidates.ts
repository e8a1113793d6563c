/**
 * Turns what cells report into auction candidates. A cell's used space is the larger of what it
 * reports (volumes on disk) and what service records promise it (placements it has not started
 * yet), so two placements in quick succession never both count the same free space.
 */
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceRecord } from '../services/service-types';
import type { CellCandidate } from './placement-auction';

/**
 * `promised`: the space service records place on each cell, as the records themselves (summed
 * here) or as a lookup kept up to date elsewhere (ServiceStore.usageAt).
 */
export function cellCandidates(
  cells: ReadonlyMap<string, CellSnapshot>,
  promised: Iterable<ServiceRecord> | ((cell: string) => number),
): CellCandidate[] {
  const promisedMb = typeof promised === 'function' ? promised : promisedBy(promised);
  const out: CellCandidate[] = [];
  for (const cell of cells.values()) {
    if (!cell.record) continue;
    // A view, not a list: building every cell's list made each placement cost O(instances).
    const volumes = { includes: (id: string): boolean => cell.actual.get(id)?.volumePresent === true };
    out.push({
      name: cell.name,
      zone: cell.record.zone,
      alive: cell.alive,
      capacityMb: cell.record.capacityMb,
      usedMb: Math.max(cell.record.usedMb, promisedMb(cell.name)),
      engines: cell.record.engines,
      executors: cell.record.executors,
      ...(cell.record.sidecars ? { sidecars: cell.record.sidecars } : {}),
      volumes,
    });
  }
  return out;
}

function promisedBy(services: Iterable<ServiceRecord>): (cell: string) => number {
  const promised = new Map<string, number>();
  for (const s of services) {
    for (const i of s.instances) promised.set(i.cell, (promised.get(i.cell) ?? 0) + s.volume.sizeMb);
  }
  return (cell) => promised.get(cell) ?? 0;
}
