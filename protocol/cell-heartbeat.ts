/**
 * A cell's heartbeat: its registration written with a TTL (the cell's lease) and its name kept in
 * the set of cells, in one script, so that re-registering and checking for deposed primaries are
 * one atomic step.
 *
 * When the registration had expired (the cell was cut off, or its agent was away, for longer than
 * its TTL), control may have judged the cell dead and fenced its primaries at a higher epoch
 * meanwhile. Then the script reads the epoch floor of every primary the cell still runs and, if
 * any floor is above that primary's epoch, does not register: the cell must shoot those first. A
 * cell that control sees registered therefore never runs a primary fenced while it was away,
 * however long its heartbeat was stuck in a stalled connection. A registration that had not
 * expired is renewed as is: a planned switchover raises the old primary's floor while its cell is
 * alive, and stops that primary cleanly itself.
 */
import type { Redis } from 'ioredis';
import type { KeyLayout } from './keys';

const HEARTBEAT_SCRIPT = `
local primaries = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 and primaries > 0 then
  local deposed = {}
  for i = 1, primaries do
    local floor = tonumber(redis.call('GET', KEYS[2 + i]) or '0') or 0
    if floor > tonumber(ARGV[4 + i]) then
      table.insert(deposed, i)
      table.insert(deposed, floor)
    end
  end
  if #deposed > 0 then
    return {0, 0, deposed}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local added = redis.call('SADD', KEYS[2], ARGV[3])
return {1, added, {}}
`;

/** A primary the cell runs, at the epoch it was started with. */
export interface HeartbeatPrimary {
  instanceId: string;
  epoch: number;
}

export interface HeartbeatResult {
  /** The registration was written (else `deposed` says why not). */
  registered: boolean;
  /** 1 when the set of cells did not hold the cell: a new cell, or a store that lost its state. */
  added: number;
  /** Primaries fenced at a higher epoch while the registration had expired, with that floor. */
  deposed: Array<{ instanceId: string; floor: number }>;
}

export async function heartbeatCell(
  redis: Redis,
  keys: KeyLayout,
  cell: string,
  registration: string,
  ttlMs: number,
  primaries: readonly HeartbeatPrimary[],
): Promise<HeartbeatResult> {
  const [registered, added, deposed] = (await redis.eval(
    HEARTBEAT_SCRIPT,
    2 + primaries.length,
    keys.cell(cell).registration,
    keys.cells,
    ...primaries.map((p) => keys.leaseFloor(p.instanceId)),
    registration,
    ttlMs,
    cell,
    primaries.length,
    ...primaries.map((p) => p.epoch),
  )) as [number, number, number[]];
  const found: HeartbeatResult['deposed'] = [];
  for (let i = 0; i + 1 < deposed.length; i += 2)
    found.push({ instanceId: primaries[deposed[i] - 1].instanceId, floor: Number(deposed[i + 1]) });
  return { registered: registered === 1, added: Number(added), deposed: found };
}
