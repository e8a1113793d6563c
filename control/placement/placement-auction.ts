/**
 * The placement auction: every live cell bids for each instance slot of a service and the best
 * bid wins. A pure function of its inputs, so the leader, the API's feasibility check and the
 * unit tests all run the same decision.
 *
 * Hard rules (a cell that breaks one does not bid): the cell is alive, runs the engine (and the
 * service's sidecars, when it would run them as processes), has the
 * free capacity for the volume, and holds no other instance of the same service (a cell failure
 * must never take two copies of one service). Soft preferences (the bid's score): the instance's
 * volume is already on the cell (a restart there keeps its data), a zone the service does not use
 * yet, and free capacity.
 */
import type { EngineKind, ExecutorKind, SidecarKind } from '../../protocol';
import { ErrorCode, SfError } from '../../common';

export interface CellCandidate {
  name: string;
  zone: string;
  alive: boolean;
  capacityMb: number;
  /** Volume space already used or promised on the cell, in MB. */
  usedMb: number;
  engines: readonly EngineKind[];
  /** Executors the cell offers; absent = process only (cells before executors were reported). */
  executors?: readonly ExecutorKind[];
  /** Sidecars the cell can run as processes; absent = none. */
  sidecars?: readonly SidecarKind[];
  /** Instance ids whose volume is present on this cell (an array, or a view of the cell's reports). */
  volumes?: { includes(instanceId: string): boolean };
}

export interface PlacementSlot {
  /** The instance to place; matched against `CellCandidate.volumes` for locality. */
  instanceId: string;
}

export interface PlacementRequest {
  service: string;
  engine: EngineKind;
  /** The executor the service asks for; absent = any cell (each runs it with its default). */
  executor?: ExecutorKind;
  /** Sidecars every instance runs beside its engine; absent = none. */
  sidecars?: readonly SidecarKind[];
  sizeMb: number;
  slots: readonly PlacementSlot[];
  /** Cells (and their zones) already holding an instance of this service that stays. */
  occupied: ReadonlyArray<{ cell: string; zone: string }>;
}

export interface PlacementWeights {
  /** @default 1000: a volume already on the cell beats everything else */
  volumeLocality?: number;
  /** @default 100: an unused zone beats any capacity difference */
  newZone?: number;
  /** @default 10, scaled by the free fraction after placement (0..1) */
  freeCapacity?: number;
}

export const DEFAULT_PLACEMENT_WEIGHTS = { volumeLocality: 1000, newZone: 100, freeCapacity: 10 } as const;

export interface PlacementBid {
  cell: string;
  zone: string;
  score: number;
}

export interface PlacementDecision {
  instanceId: string;
  cell: string;
  zone: string;
  score: number;
}

/** Why a cell could not bid, per cell, for the error message. */
export type Exclusion = 'dead' | 'engine' | 'executor' | 'sidecar' | 'capacity' | 'same-service';

/** Places every slot or throws SF_ERR_PLACEMENT_UNSATISFIABLE explaining each cell's exclusion. */
export function runPlacementAuction(
  request: PlacementRequest,
  cells: readonly CellCandidate[],
  weights: PlacementWeights = {},
): PlacementDecision[] {
  const w = { ...DEFAULT_PLACEMENT_WEIGHTS, ...weights };
  const used = new Map(cells.map((c) => [c.name, c.usedMb]));
  const taken = new Set(request.occupied.map((o) => o.cell));
  const zones = new Set(request.occupied.map((o) => o.zone));
  const out: PlacementDecision[] = [];
  for (const slot of request.slots) {
    const exclusions = new Map<string, Exclusion>();
    let best: PlacementBid | null = null;
    for (const cell of cells) {
      const why = exclusionOf(cell, request, used.get(cell.name) ?? 0, taken);
      if (why) {
        exclusions.set(cell.name, why);
        continue;
      }
      const free = cell.capacityMb - (used.get(cell.name) ?? 0) - request.sizeMb;
      let score = w.freeCapacity * (cell.capacityMb > 0 ? free / cell.capacityMb : 0);
      if (!zones.has(cell.zone)) score += w.newZone;
      if (cell.volumes?.includes(slot.instanceId)) score += w.volumeLocality;
      // Ties go to the alphabetically first cell, so the decision is deterministic.
      if (!best || score > best.score || (score === best.score && cell.name < best.cell))
        best = { cell: cell.name, zone: cell.zone, score };
    }
    if (!best) throw unsatisfiable(request, out.length, exclusions);
    out.push({ instanceId: slot.instanceId, ...best });
    used.set(best.cell, (used.get(best.cell) ?? 0) + request.sizeMb);
    taken.add(best.cell);
    zones.add(best.zone);
  }
  return out;
}

function exclusionOf(
  cell: CellCandidate,
  request: PlacementRequest,
  usedMb: number,
  taken: ReadonlySet<string>,
): Exclusion | null {
  if (!cell.alive) return 'dead';
  // A docker cell runs engines from images, whatever the host has installed.
  if (request.executor && !(cell.executors ?? ['process']).includes(request.executor)) return 'executor';
  if (request.executor !== 'docker' && !cell.engines.includes(request.engine)) return 'engine';
  // Sidecars are part of the pod: a cell that cannot run them would run the engine alone, and the
  // service's metrics would be missing with nothing failing. Docker cells run them from the image.
  if (request.executor !== 'docker' && (request.sidecars ?? []).some((k) => !(cell.sidecars ?? []).includes(k)))
    return 'sidecar';
  if (taken.has(cell.name)) return 'same-service';
  if (cell.capacityMb - usedMb < request.sizeMb) return 'capacity';
  return null;
}

const EXPLAIN: Record<Exclusion, string> = {
  dead: 'not alive',
  engine: 'engine not available',
  executor: 'executor not available',
  sidecar: 'sidecar binary not installed',
  capacity: 'not enough free capacity',
  'same-service': 'already runs an instance of this service',
};

function unsatisfiable(request: PlacementRequest, placed: number, exclusions: Map<string, Exclusion>): SfError {
  const needed = request.slots.length + request.occupied.length;
  const detail = exclusions.size
    ? [...exclusions].map(([cell, why]) => `${cell}: ${EXPLAIN[why]}`).join('; ')
    : 'no cells are registered';
  return new SfError(
    ErrorCode.PlacementUnsatisfiable,
    `cannot place service '${request.service}': it needs ${needed} cells with engine ${request.engine} and ${request.sizeMb} MB free each, ` +
      `found ${request.occupied.length + placed} (${detail})`,
  );
}
