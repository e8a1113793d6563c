/**
 * Chooses the replica to promote: the one with the highest replication position (Redis offset,
 * PostgreSQL LSN as a decimal string), so every write any replica has is kept; ties go to the
 * first id, so the choice is deterministic.
 */

export interface Candidate {
  instanceId: string;
  cell: string;
  /** Decimal integer string, comparable with BigInt; null when unknown (ranks last). */
  positionValue: string | null;
}

export function chooseReplica(candidates: readonly Candidate[]): Candidate | undefined {
  let best: Candidate | undefined;
  for (const c of [...candidates].sort((a, b) => a.instanceId.localeCompare(b.instanceId))) {
    if (!best || rank(c) > rank(best)) best = c;
  }
  return best;
}

function rank(c: Candidate): bigint {
  return c.positionValue !== null && /^\d+$/.test(c.positionValue) ? BigInt(c.positionValue) : -1n;
}
