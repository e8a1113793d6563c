/**
 * The cell's lease keeper (issue 5): renews its primary's lease (protocol/lease.ts) while the
 * engine answers health checks and stops renewing when it does not, so the lease expires and
 * control sees it.
 */
import { EventEmitter } from 'node:events';
import type { Redis } from 'ioredis';
import { type KeyLayout, renewLease, type LeaseRenewal } from '../protocol';

export interface LeaseKeeperOptions {
  redis: Redis;
  /** Where the lease lives (the installation's key prefix). */
  keys: KeyLayout;
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
  private renewedAtMs = 0;
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

  /** Date.now() of the last renewal that succeeded; 0 before the first. */
  get renewedAt(): number {
    return this.renewedAtMs;
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
      const result = await renewLease(redis, this.options.keys, instanceId, this.epochValue, holder, this.ttlMs);
      if (result.ok) this.renewedAtMs = Date.now();
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
