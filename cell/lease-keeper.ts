/**
 * Primary leases (issue 5). A primary holds `sf:lease:{instanceId}` — a hash {epoch, holder,
 * renewedAt} with a TTL — renewed by its cell for as long as the engine answers health checks.
 * When the engine is unhealthy the keeper stops renewing, so the lease expires and control sees
 * it. Every renewal is a fencing-token check done atomically in Redis: a renewal carrying an
 * epoch older than the lease's own or than the floor control set when it fenced
 * (`sf:lease:{instanceId}:floor`) is refused, so a deposed primary can never take its lease back,
 * even after the key expired.
 */
import { EventEmitter } from 'node:events';
import type { Redis } from 'ioredis';
import { cellKeys } from '../protocol/cell-protocol';

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
  instanceId: string,
  epoch: number,
  holder: string,
  ttlMs: number,
): Promise<LeaseRenewal> {
  const [ok, current] = (await redis.eval(
    RENEW_SCRIPT,
    2,
    cellKeys.lease(instanceId),
    cellKeys.leaseFloor(instanceId),
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
export async function fenceLease(redis: Redis, instanceId: string, epoch: number): Promise<number> {
  return Number(await redis.eval(FENCE_SCRIPT, 2, cellKeys.lease(instanceId), cellKeys.leaseFloor(instanceId), epoch));
}

export interface LeaseState {
  epoch: number;
  holder: string;
  renewedAt: number;
  ttlMs: number;
}

export async function readLease(redis: Redis, instanceId: string): Promise<LeaseState | undefined> {
  const key = cellKeys.lease(instanceId);
  const [fields, ttl] = await Promise.all([redis.hgetall(key), redis.pttl(key)]);
  if (!fields.epoch) return undefined;
  return { epoch: Number(fields.epoch), holder: fields.holder ?? '', renewedAt: Number(fields.renewedAt), ttlMs: ttl };
}

export interface LeaseKeeperOptions {
  redis: Redis;
  instanceId: string;
  /** Who holds it: the cell name. */
  holder: string;
  epoch: number;
  /** @default 3000 */
  ttlMs?: number;
  /** @default ttlMs / 3 */
  renewEveryMs?: number;
  /** Renewal happens only while this says the engine is healthy. */
  healthy: () => Promise<boolean>;
}

export type LeaseKeeperEvent = 'acquired' | 'lost';

/**
 * Keeps one lease alive. Emits `acquired` when a renewal succeeds after none did, and
 * `lost` with a reason (`refused` with the winning epoch, `unhealthy`, or `error`) when a renewal
 * is refused or skipped. It never stops the engine itself: what to do with a primary that lost
 * its lease is control's decision.
 */
export class LeaseKeeper extends EventEmitter {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private heldFlag = false;
  private epochValue: number;
  private readonly ttlMs: number;
  private readonly renewEveryMs: number;

  constructor(private readonly options: LeaseKeeperOptions) {
    super();
    this.epochValue = options.epoch;
    this.ttlMs = options.ttlMs ?? 3_000;
    this.renewEveryMs = options.renewEveryMs ?? Math.max(100, Math.floor(this.ttlMs / 3));
  }

  get held(): boolean {
    return this.heldFlag;
  }

  get epoch(): number {
    return this.epochValue;
  }

  /** After a promotion the same keeper renews with the new epoch. */
  setEpoch(epoch: number): void {
    this.epochValue = Math.max(this.epochValue, epoch);
  }

  start(): void {
    this.stopped = false;
    void this.tick();
  }

  /** Stops renewing; the lease then expires by TTL (not deleted: deletion is control's move). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** One renewal attempt; exposed so tests and the cell can drive it deterministically. */
  async renewOnce(): Promise<LeaseRenewal | undefined> {
    const { redis, instanceId, holder } = this.options;
    let healthy: boolean;
    try {
      healthy = await this.options.healthy();
    } catch {
      healthy = false;
    }
    if (!healthy) {
      this.setHeld(false, { reason: 'unhealthy' });
      return undefined;
    }
    try {
      const result = await renewLease(redis, instanceId, this.epochValue, holder, this.ttlMs);
      this.setHeld(result.ok, { reason: 'refused', epoch: result.epoch });
      return result;
    } catch (err) {
      this.setHeld(false, { reason: 'error', error: err instanceof Error ? err.message : String(err) });
      return undefined;
    }
  }

  private setHeld(held: boolean, why: Record<string, unknown>): void {
    if (held === this.heldFlag) return;
    this.heldFlag = held;
    if (held) this.emit('acquired', { epoch: this.epochValue });
    else this.emit('lost', why);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    await this.renewOnce();
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.tick(), this.renewEveryMs);
    this.timer.unref();
  }
}
