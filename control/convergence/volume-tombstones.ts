/**
 * Which volumes control may delete, decided apart from any Redis so unit tests prove the rules
 * with fakes. A volume is deleted only when a tombstone names it: a deleted service's
 * instances (deletable at once), or a replica replaced while its cell was away (deletable after a
 * long retention, default hours). A volume nobody owns and no tombstone names — the store lost
 * its records, or a cell came back with something control forgot — is kept and reported, never
 * deleted: a missing cell or a missing record is not a decision to destroy data.
 */
import type { CasOp } from '../state/cas-commit';
import type { KeyLayout, ActualInstance } from '../../protocol';

export type TombstoneReason = 'service-deleted' | 'replaced';

/** A volume control decided to give up, and from when it may be deleted. */
export interface VolumeTombstone {
  cell: string;
  instanceId: string;
  service: string;
  reason: TombstoneReason;
  /** When the decision was made (epoch ms). */
  at: number;
  /** Not deleted before this time (epoch ms). */
  deleteAfter: number;
}

/** 6 hours: a replaced replica's volume outlives its replacement this long (a cell back from maintenance keeps its data). */
export const DEFAULT_REPLACED_VOLUME_RETENTION_MS = 6 * 60 * 60 * 1000;

export function tombstoneField(cell: string, instanceId: string): string {
  return `${cell}/${instanceId}`;
}

export function putTombstoneOp(keys: KeyLayout, t: VolumeTombstone): CasOp {
  return {
    cmd: 'HSET',
    key: keys.volumeTombstones,
    field: tombstoneField(t.cell, t.instanceId),
    value: JSON.stringify(t),
  };
}

export function parseTombstones(raw: Record<string, string>): Map<string, VolumeTombstone> {
  const out = new Map<string, VolumeTombstone>();
  for (const [field, text] of Object.entries(raw)) {
    try {
      out.set(field, JSON.parse(text) as VolumeTombstone);
    } catch {
      // A malformed tombstone deletes nothing; it is cleared below as not applicable.
    }
  }
  return out;
}

/** What the collector sees of one cell. */
export interface CellVolumes {
  name: string;
  alive: boolean;
  actual: ReadonlyMap<string, Pick<ActualInstance, 'instanceId' | 'service' | 'state' | 'volumePresent'>>;
}

export interface VolumePlan {
  /** Volumes to delete now (a tombstone allows it, the instance is stopped, its cell is alive). */
  deletes: VolumeTombstone[];
  /** Tombstones that are done: the cell is alive and no longer reports the volume. */
  cleared: string[];
  /** `cell/instanceId` of volumes no service owns and no tombstone names: kept, reported once. */
  unowned: Array<{ cell: string; instanceId: string; service: string }>;
}

/**
 * `owned` are `cell/instanceId` of every instance a service record lists; an owned volume is never
 * deleted even if a tombstone names it (a record that re-adopted it wins).
 */
export function planVolumeDeletions(
  cells: Iterable<CellVolumes>,
  owned: ReadonlySet<string>,
  tombstones: ReadonlyMap<string, VolumeTombstone>,
  now: number,
): VolumePlan {
  const plan: VolumePlan = { deletes: [], cleared: [], unowned: [] };
  const seen = new Set<string>();
  const aliveCells = new Set<string>();
  for (const cell of cells) {
    if (!cell.alive) continue;
    aliveCells.add(cell.name);
    for (const actual of cell.actual.values()) {
      const key = tombstoneField(cell.name, actual.instanceId);
      seen.add(key);
      if (owned.has(key) || !actual.volumePresent) continue;
      const tomb = tombstones.get(key);
      if (!tomb) {
        plan.unowned.push({ cell: cell.name, instanceId: actual.instanceId, service: actual.service });
        continue;
      }
      // A running instance is not deleted under it: the cell stops what is not desired first.
      if (actual.state !== 'stopped' && actual.state !== 'failed' && actual.state !== 'fenced') continue;
      if (now < tomb.deleteAfter) continue;
      plan.deletes.push(tomb);
    }
  }
  for (const [key, tomb] of tombstones) {
    if (aliveCells.has(tomb.cell) && !seen.has(key)) plan.cleared.push(key);
    else if (owned.has(key)) plan.cleared.push(key);
  }
  return plan;
}
