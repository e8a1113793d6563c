/**
 * The cell's lease keeper: holds its primary's lease claim (protocol/lease.ts) while the
 * engine answers health checks and the cell's own lease (its registration, kept by the heartbeat)
 * is current, and withdraws the claim when the engine has stopped answering for a TTL, so control
 * sees the loss.
 *
 * Health is checked locally every `renewEveryMs`; Redis is touched only when something changes
 * (claim on start, promotion or recovery; release on failure), never at rest: the cell's heartbeat
 * is the one renewal that keeps all of its primaries' leases alive (docs/fencing.md).
 */
import { EventEmitter } from 'node:events';
import type { Redis } from 'ioredis';
import { claimLease, type KeyLayout, type LeaseClaim, releaseLease } from '../protocol';

export interface LeaseKeeperOptions {
  redis: Redis;
  /** Where the lease lives (the installation's key prefix). */
  keys: KeyLayout;
  instanceId: string;
  /** Who holds it: the cell name. */
  holder: string;
  /** The holder's life: the `startedAt` its registration carries. */
  boot: number;
  epoch: number;
  /** @default 3000 */
  ttlMs?: number;
  /** How often health and the cell's lease are looked at. @default ttlMs / 3 */
  renewEveryMs?: number;
  /** The claim is held only while this says the engine is healthy. */
  healthy: () => Promise<boolean>;
  /**
   * Whether the cell's own lease (its registration) is current: the last heartbeat that reached
   * Redis is younger than the registration's TTL. @default () => true
   */
  cellLeaseCurrent?: () => boolean;
}

export type LeaseKeeperEvent = 'acquired' | 'lost' | 'refused';

/**
 * Keeps one lease claim. Emits `acquired` when a claim succeeds after none did, and `lost` with a
 * reason (`refused` with the winning epoch, `unhealthy`, `cell-lease` or `error`) when a claim
 * is refused, withdrawn or cannot be made. It never stops the engine itself: what to do with a
 * primary that lost its lease is control's decision.
 */
export class LeaseKeeper extends EventEmitter {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private heldFlag = false;
  /** The epoch our claim in Redis carries, when one may be there (until a release succeeded). */
  private claimedEpoch: number | undefined;
  /** The epoch a claim was refused at: not tried again until the epoch changes (a fence is final). */
  private refusedEpoch: number | undefined;
  /** Date.now() of the last look that found the claim held; 0 before the first. */
  private heldAtMs = 0;
  /** Set by `verify`: the next look asks the store even though the claim is held. */
  private verifying = false;
  private epochValue: number;
  private readonly ttlMs: number;
  private readonly renewEveryMs: number;
  /** Since when health checks fail without a break (undefined while healthy). */
  private unhealthySince: number | undefined;

  constructor(private readonly options: LeaseKeeperOptions) {
    super();
    this.epochValue = options.epoch;
    this.ttlMs = options.ttlMs ?? 3_000;
    this.renewEveryMs = options.renewEveryMs ?? Math.max(100, Math.floor(this.ttlMs / 3));
  }

  get held(): boolean {
    return this.heldFlag;
  }

  /** Date.now() of the last look that found the claim held (healthy, cell lease current); 0 before. */
  get heldAt(): number {
    return this.heldAtMs;
  }

  get epoch(): number {
    return this.epochValue;
  }

  /** After a promotion the same keeper claims with the new epoch (at its next look). */
  setEpoch(epoch: number): void {
    this.epochValue = Math.max(this.epochValue, epoch);
  }

  start(): void {
    this.stopped = false;
    void this.tick();
  }

  /**
   * Stops looking after the claim. The claim is left in Redis (withdrawing it is `release`): a
   * cell that stops lets its registration expire, which voids every claim it holds.
   */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * Checks the claim against the store now, held or not: the cell's heartbeats had a gap (a
   * partition, a stalled connection), so control may have fenced this epoch meanwhile. A refusal
   * is emitted as `refused` with `afterGap: true`.
   */
  async verify(): Promise<void> {
    this.verifying = true;
    this.refusedEpoch = undefined;
    await this.renewOnce().catch(() => undefined);
  }

  /** Forgets what was claimed, so the next look claims again (the store lost its state). */
  reclaim(): void {
    this.claimedEpoch = undefined;
    this.refusedEpoch = undefined;
  }

  /** Withdraws our claim (the instance stopped or is no longer primary). */
  async release(): Promise<void> {
    const epoch = this.claimedEpoch;
    if (epoch === undefined) return;
    const { redis, keys, instanceId, holder, boot } = this.options;
    await releaseLease(redis, keys, instanceId, epoch, { cell: holder, boot });
    this.claimedEpoch = undefined;
  }

  /**
   * One look: claims when healthy and not yet claimed at the current epoch, withdraws when not
   * healthy. Exposed so tests and the cell can drive it deterministically.
   */
  async renewOnce(): Promise<LeaseClaim | undefined> {
    const { redis, keys, instanceId, holder, boot } = this.options;
    const cellLease = this.options.cellLeaseCurrent?.() ?? true;
    let healthy = false;
    if (cellLease) {
      try {
        healthy = await this.options.healthy();
      } catch {
        healthy = false;
      }
    }
    if (!healthy) {
      this.setHeld(false, { reason: cellLease ? 'unhealthy' : 'cell-lease' });
      // The claim goes once the engine has failed its checks for a whole TTL, when a renewed lease
      // would have expired: a check or two missed on a busy host is not a loss. Retried at each
      // look until Redis takes it.
      this.unhealthySince ??= Date.now();
      if (cellLease && Date.now() - this.unhealthySince >= this.ttlMs) await this.release().catch(() => undefined);
      return undefined;
    }
    this.unhealthySince = undefined;
    const afterGap = this.verifying;
    this.verifying = false;
    if (!afterGap && this.heldFlag && this.claimedEpoch === this.epochValue) {
      this.heldAtMs = Date.now();
      return { ok: true, epoch: this.epochValue };
    }
    if (this.refusedEpoch === this.epochValue) return { ok: false, epoch: this.epochValue };
    try {
      const result = await claimLease(redis, keys, instanceId, this.epochValue, { cell: holder, boot });
      if (result.ok) {
        this.claimedEpoch = this.epochValue;
        this.heldAtMs = Date.now();
      } else {
        this.refusedEpoch = this.epochValue;
        // Emitted at every refusal, held or not before: a claim refused after the cell's lease
        // lapsed (a partition) says control fenced this primary meanwhile.
        this.emit('refused', { epoch: result.epoch, afterGap });
      }
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
