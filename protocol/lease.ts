/**
 * Primary leases, the part both sides agree on. A primary holds `<prefix>lease:{instanceId}` — a
 * hash {epoch, holder, renewedAt} with a TTL — renewed by its cell (cell/lease-keeper.ts) for as
 * long as the engine answers health checks. Every renewal is a fencing-token check done atomically
 * in Redis: a renewal carrying an epoch older than the lease's own or than the floor control set
 * when it fenced (`<prefix>lease:{instanceId}:floor`) is refused, so a deposed primary can never
 * take its lease back, even after the key expired.
 */
import type { Redis } from 'ioredis';
import type { KeyLayout } from './keys';

const RENEW_SCRIPT = `
local epoch = tonumber(ARGV[1])
local floor = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
if epoch < floor or epoch < current then
  return {0, math.max(floor, current)}
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'holder', ARGV[2], 'renewedAt', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, epoch}
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

export interface LeaseRenewal {
  ok: boolean;
  /** On refusal: the epoch that beat ours. */
  epoch: number;
}

export async function renewLease(
  redis: Redis,
  keys: KeyLayout,
  instanceId: string,
  epoch: number,
  holder: string,
  ttlMs: number,
): Promise<LeaseRenewal> {
  const [ok, current] = (await redis.eval(
    RENEW_SCRIPT,
    2,
    keys.lease(instanceId),
    keys.leaseFloor(instanceId),
    epoch,
    holder,
    ttlMs,
    Date.now(),
  )) as [number, number];
  return { ok: ok === 1, epoch: Number(current) };
}

/**
 * Control's side of fencing: raises the instance's epoch floor to `epoch` and deletes a lease held
 * with an older epoch. Returns the floor now in force.
 */
export async function fenceLease(redis: Redis, keys: KeyLayout, instanceId: string, epoch: number): Promise<number> {
  return Number(await redis.eval(FENCE_SCRIPT, 2, keys.lease(instanceId), keys.leaseFloor(instanceId), epoch));
}

export interface LeaseState {
  epoch: number;
  holder: string;
  renewedAt: number;
  ttlMs: number;
}

export async function readLease(redis: Redis, keys: KeyLayout, instanceId: string): Promise<LeaseState | undefined> {
  const key = keys.lease(instanceId);
  const [fields, ttl] = await Promise.all([redis.hgetall(key), redis.pttl(key)]);
  if (!fields.epoch) return undefined;
  return { epoch: Number(fields.epoch), holder: fields.holder ?? '', renewedAt: Number(fields.renewedAt), ttlMs: ttl };
}
