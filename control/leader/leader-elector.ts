/**
 * Leader election over one Redis lock with fencing tokens. Acquiring is `SET NX PX` plus `INCR`
 * of a token counter in one script, so every leadership term has a token larger than all before
 * it; renewal is a script that extends the TTL only while the lock still holds this holder's
 * value. A standby retries every `retryMs` and takes over once the lock expires. Writes made as
 * leader carry the fence (fenced-commit.ts), so a deposed leader's late writes are refused.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { withDefaults } from '../../common';
import type { LeaderFence } from './fenced-commit';

export interface LeaderElectorOptions {
  lockKey: string;
  tokenKey: string;
  /** @default a random id; shows up in the lock value for operators */
  holderId?: string;
  /** Lock TTL: how long a dead leader blocks its successor. @default 3000 */
  ttlMs?: number;
  /** Renewal and standby retry interval; well below the TTL. @default 1000 */
  renewMs?: number;
  onElected?: (fence: LeaderFence) => void;
  onDemoted?: (fence: LeaderFence) => void;
  onError?: (err: Error) => void;
}

export const DEFAULT_LEADER_ELECTOR_OPTIONS: Required<Pick<LeaderElectorOptions, 'ttlMs' | 'renewMs'>> = {
  ttlMs: 3_000,
  renewMs: 1_000,
};

// KEYS[1] lock, KEYS[2] token counter; ARGV[1] holder id, ARGV[2] ttl. Returns the new token or 0.
const ACQUIRE_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
`;

// KEYS[1] lock; ARGV[1] the exact lock value, ARGV[2] ttl. 1 when renewed, 0 when lost.
const RENEW_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`;

const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

interface LeaderCommands {
  sfLeaderAcquire(lock: string, token: string, holder: string, ttl: string): Promise<number>;
  sfLeaderRenew(lock: string, value: string, ttl: string): Promise<number>;
  sfLeaderRelease(lock: string, value: string): Promise<number>;
}

export class LeaderElector {
  readonly holderId: string;
  private readonly opts: LeaderElectorOptions & Required<Pick<LeaderElectorOptions, 'ttlMs' | 'renewMs'>>;
  private fence: LeaderFence | null = null;
  /** Local deadline of the current term: past it, this process stops acting as leader even if Redis is unreachable. */
  private validUntil = 0;
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private readonly redis: Redis,
    options: LeaderElectorOptions,
  ) {
    this.opts = withDefaults(DEFAULT_LEADER_ELECTOR_OPTIONS, options);
    this.holderId = options.holderId ?? randomUUID();
    redis.defineCommand('sfLeaderAcquire', { numberOfKeys: 2, lua: ACQUIRE_SCRIPT });
    redis.defineCommand('sfLeaderRenew', { numberOfKeys: 1, lua: RENEW_SCRIPT });
    redis.defineCommand('sfLeaderRelease', { numberOfKeys: 1, lua: RELEASE_SCRIPT });
  }

  /** The fence of the current term, or null when this process is not (or no longer surely) the leader. */
  current(): LeaderFence | null {
    if (this.fence && Date.now() >= this.validUntil) this.demote();
    return this.fence;
  }

  isLeader(): boolean {
    return this.current() !== null;
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.tick();
    this.timer = setInterval(() => {
      if (!this.ticking) this.ticking = this.tick().finally(() => (this.ticking = null));
    }, this.opts.renewMs);
  }

  /** Stops campaigning and releases the lock if held, so a standby takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.ticking;
    const fence = this.fence;
    this.demote();
    if (fence)
      await this.commands()
        .sfLeaderRelease(fence.lockKey, fence.holder)
        .catch(() => 0);
  }

  /**
   * Gives up the current term and campaigns again at once, so the next term has a fresh token
   * (used after control restored a store that lost data: the token counter was raised past every
   * token the restored state holds, and the current term's token is below it).
   */
  async resign(): Promise<void> {
    const fence = this.fence;
    this.demote();
    if (fence)
      await this.commands()
        .sfLeaderRelease(fence.lockKey, fence.holder)
        .catch(() => 0);
    await this.tick();
  }

  /** Tries to become leader now (tests and start-up use it instead of waiting a tick). */
  async tick(): Promise<void> {
    if (this.stopped) return;
    const started = Date.now();
    try {
      if (this.fence) {
        const renewed = await this.commands().sfLeaderRenew(
          this.opts.lockKey,
          this.fence.holder,
          String(this.opts.ttlMs),
        );
        if (renewed === 1) this.validUntil = started + this.opts.ttlMs;
        else this.demote();
        return;
      }
      const token = await this.commands().sfLeaderAcquire(
        this.opts.lockKey,
        this.opts.tokenKey,
        this.holderId,
        String(this.opts.ttlMs),
      );
      if (token > 0 && !this.stopped) {
        this.fence = {
          lockKey: this.opts.lockKey,
          tokenKey: this.opts.tokenKey,
          holder: `${this.holderId}|${token}`,
          token,
        };
        // Measured from before the request: the lock may expire in Redis no earlier than this.
        this.validUntil = started + this.opts.ttlMs;
        this.opts.onElected?.(this.fence);
      }
    } catch (err) {
      this.opts.onError?.(err as Error);
      // Unreachable Redis: keep acting only until the term surely ended (current() checks).
    }
  }

  private demote(): void {
    const fence = this.fence;
    if (!fence) return;
    this.fence = null;
    this.validUntil = 0;
    this.opts.onDemoted?.(fence);
  }

  private commands(): LeaderCommands {
    return this.redis as unknown as LeaderCommands;
  }
}
