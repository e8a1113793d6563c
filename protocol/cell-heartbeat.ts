/**
 * A cell's heartbeat: its registration written with a TTL (the cell's lease). At rest it only
 * renews the registration, with one `SET ... XX`; a missing one is written again by a script, so
 * that re-registering and checking for deposed primaries are one atomic step, and the cell's name
 * is added to the set of cells, whose answer tells a store that lost everything from an expiry.
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
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { KeyLayout } from './keys';

const HEARTBEAT_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0, {}}
end
local deposed = {}
for i = 1, tonumber(ARGV[4]) do
  local floor = tonumber(redis.call('GET', KEYS[2 + i]) or '0') or 0
  if floor > tonumber(ARGV[4 + i]) then
    table.insert(deposed, i)
    table.insert(deposed, floor)
  end
end
if #deposed > 0 then
  return {0, 0, deposed}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local added = redis.call('SADD', KEYS[2], ARGV[3])
return {1, added, {}}
`;
const HEARTBEAT_SHA = createHash('sha1').update(HEARTBEAT_SCRIPT).digest('hex');

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
  const args = [
    2 + primaries.length,
    keys.cell(cell).registration,
    keys.cells,
    ...primaries.map((p) => keys.leaseFloor(p.instanceId)),
    registration,
    ttlMs,
    cell,
    primaries.length,
    ...primaries.map((p) => p.epoch),
  ] as const;
  // At rest a beat is one plain SET that only renews a registration that is still there (`XX`):
  // one command for the store to count, where a script counts its own calls too. Only an expired
  // registration needs the script's floor check; its text goes over the wire only when the store
  // does not know it yet (first beat, or a store that restarted).
  if ((await redis.set(keys.cell(cell).registration, registration, 'PX', ttlMs, 'XX')) === 'OK')
    return { registered: true, added: 0, deposed: [] };
  const reply = await redis.evalsha(HEARTBEAT_SHA, ...args).catch((err: unknown) => {
    if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return redis.eval(HEARTBEAT_SCRIPT, ...args);
    throw err;
  });
  const [registered, added, deposed] = reply as [number, number, number[]];
  const found: HeartbeatResult['deposed'] = [];
  for (let i = 0; i + 1 < deposed.length; i += 2)
    found.push({ instanceId: primaries[deposed[i] - 1].instanceId, floor: Number(deposed[i + 1]) });
  return { registered: registered === 1, added: Number(added), deposed: found };
}
