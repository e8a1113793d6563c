/**
 * Primary leases, the part both sides agree on. A primary's lease has two parts:
 *
 * - its **claim**, `<prefix>lease:{instanceId}`, a hash {epoch, holder, boot, claimedAt} with no
 *   TTL, written by its cell when the primary starts, is promoted or turns healthy again, and
 *   released when its engine stops answering health checks. Writing a claim is a fencing-token
 *   check done atomically in Redis: a claim carrying an epoch older than the current claim's or
 *   than the floor control set when it fenced (`<prefix>lease:{instanceId}:floor`) is refused, so
 *   a deposed primary can never take its lease back;
 * - its **cell's lease**: the cell's registration key (`<prefix>cell:{name}`), which the cell's
 *   heartbeat rewrites with a TTL anyway. One key per cell stands for every primary the cell
 *   holds, so the cost of leases at rest is the heartbeat's, whatever the number of primaries.
 *
 * A lease is in force when its claim exists and the holder's registration exists with the same
 * `startedAt` as the claim's `boot` (a cell that restarted re-claims what it adopts; claims of its
 * previous life are void). Why this is as safe as a lease per primary: docs/fencing.md.
 */
import type { Redis } from 'ioredis';
import type { KeyLayout } from './keys';

const CLAIM_SCRIPT = `
local epoch = tonumber(ARGV[1])
local floor = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
if epoch < floor or epoch < current then
  return {0, math.max(floor, current)}
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'holder', ARGV[2], 'boot', ARGV[3], 'claimedAt', ARGV[4])
redis.call('PERSIST', KEYS[1])
return {1, epoch}
`;

const RELEASE_SCRIPT = `
local fields = redis.call('HMGET', KEYS[1], 'epoch', 'holder', 'boot')
if fields[1] == ARGV[1] and fields[2] == ARGV[2] and fields[3] == ARGV[3] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`;

const FENCE_SCRIPT = `
local epoch = tonumber(ARGV[1])
local floor = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if epoch > floor then
  redis.call('SET', KEYS[2], ARGV[1])
  floor = epoch
end
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
if current < floor then
  redis.call('DEL', KEYS[1])
end
return floor
`;

/** Who claims: a cell, in one life of its agent (the registration's `startedAt`). */
export interface LeaseHolder {
  cell: string;
  boot: number;
}

export interface LeaseClaim {
  ok: boolean;
  /** On refusal: the epoch that beat ours. */
  epoch: number;
}

/**
 * Claims (or re-claims with a newer epoch) the instance's lease for `holder`. Refused when the
 * epoch is below the floor or below the claim already there.
 */
export async function claimLease(
  redis: Redis,
  keys: KeyLayout,
  instanceId: string,
  epoch: number,
  holder: LeaseHolder,
): Promise<LeaseClaim> {
  const [ok, current] = (await redis.eval(
    CLAIM_SCRIPT,
    2,
    keys.lease(instanceId),
    keys.leaseFloor(instanceId),
    epoch,
    holder.cell,
    holder.boot,
    Date.now(),
  )) as [number, number];
  return { ok: ok === 1, epoch: Number(current) };
}

/** Withdraws the claim if it is still exactly ours (a newer claim or a fence is left alone). */
export async function releaseLease(
  redis: Redis,
  keys: KeyLayout,
  instanceId: string,
  epoch: number,
  holder: LeaseHolder,
): Promise<boolean> {
  return Number(await redis.eval(RELEASE_SCRIPT, 1, keys.lease(instanceId), epoch, holder.cell, holder.boot)) === 1;
}

/**
 * Control's side of fencing: raises the instance's epoch floor to `epoch` and deletes a claim
 * with an older epoch. Returns the floor now in force.
 */
export async function fenceLease(redis: Redis, keys: KeyLayout, instanceId: string, epoch: number): Promise<number> {
  return Number(await redis.eval(FENCE_SCRIPT, 2, keys.lease(instanceId), keys.leaseFloor(instanceId), epoch));
}

export interface LeaseState {
  epoch: number;
  holder: string;
  claimedAt: number;
  /** What is left of the holder cell's registration TTL. */
  ttlMs: number;
}

/**
 * The lease in force, or undefined: no claim, or its holder's registration expired, or the holder
 * restarted since it claimed.
 */
export async function readLease(redis: Redis, keys: KeyLayout, instanceId: string): Promise<LeaseState | undefined> {
  const fields = await redis.hgetall(keys.lease(instanceId));
  if (!fields.epoch || !fields.holder) return undefined;
  const registration = keys.cell(fields.holder).registration;
  const [raw, ttl] = await Promise.all([redis.get(registration), redis.pttl(registration)]);
  if (!raw) return undefined;
  let startedAt: unknown;
  try {
    startedAt = (JSON.parse(raw) as { startedAt?: unknown }).startedAt;
  } catch {
    return undefined;
  }
  if (String(startedAt) !== fields.boot) return undefined;
  return { epoch: Number(fields.epoch), holder: fields.holder, claimedAt: Number(fields.claimedAt), ttlMs: ttl };
}
