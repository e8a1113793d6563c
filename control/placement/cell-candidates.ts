/**
 * Turns what cells report into auction candidates. A cell's used space is the larger of what it
 * reports (volumes on disk) and what service records promise it (placements it has not started
 * yet), so two placements in quick succession never both count the same free space.
 */
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceRecord } from '../services/service-types';
import type { CellCandidate } from './placement-auction';

export function cellCandidates(
  cells: ReadonlyMap<string, CellSnapshot>,
  services: Iterable<ServiceRecord>,
): CellCandidate[] {
  const promised = new Map<string, number>();
  for (const s of services) {
    for (const i of s.instances) promised.set(i.cell, (promised.get(i.cell) ?? 0) + s.volume.sizeMb);
  }
  const out: CellCandidate[] = [];
  for (const cell of cells.values()) {
    if (!cell.record) continue;
    const volumes = [...cell.actual.values()].filter((a) => a.volumePresent).map((a) => a.instanceId);
    out.push({
      name: cell.name,
      zone: cell.record.zone,
      alive: cell.alive,
      capacityMb: cell.record.capacityMb,
      usedMb: Math.max(cell.record.usedMb, promised.get(cell.name) ?? 0),
      engines: cell.record.engines,
      executors: cell.record.executors,
      ...(cell.record.sidecars ? { sidecars: cell.record.sidecars } : {}),
      volumes,
    });
  }
  return out;
}
