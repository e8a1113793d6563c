/**
 * Where the leader's API answers (operator actions on a standby control are forwarded
 * to the leader instead of answering 503). The leader publishes its URL next to the lock, with
 * the lock value it holds and a TTL; a standby trusts the record only while the lock still holds
 * that value, so it never forwards to a control that lost the lock.
 */
import type { Redis } from 'ioredis';
import type { KeyLayout } from '../../protocol';
import type { LeaderFence } from '../leader/fenced-commit';

export interface LeaderAddress {
  /** Base URL of the leader's API, e.g. `http://127.0.0.1:7600`. */
  url: string;
  /** The lock value `${holderId}|${token}` the leader held when it published. */
  holder: string;
  token: number;
}

export interface LeaderAddressOptions {
  /** How often the leader republishes. @default 1000 */
  intervalMs?: number;
  /** TTL of the record; a crashed leader's record disappears after it. @default 3000 */
  ttlMs?: number;
}

export class LeaderAddressBook {
  private timer: NodeJS.Timeout | null = null;
  private readonly intervalMs: number;
  private readonly ttlMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
    private readonly current: () => LeaderFence | null,
    options: LeaderAddressOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 1_000;
    this.ttlMs = options.ttlMs ?? 3_000;
  }

  /** Starts publishing `url` whenever this control is the leader. */
  advertise(url: string): void {
    this.stop();
    const publish = async (): Promise<void> => {
      const fence = this.current();
      if (!fence) return;
      const record: LeaderAddress = { url, holder: fence.holder, token: fence.token };
      await this.redis.set(this.keys.leaderApi, JSON.stringify(record), 'PX', this.ttlMs).catch(() => undefined);
    };
    void publish();
    this.timer = setInterval(() => void publish(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** The leader's address, or null when none is published or the publisher no longer holds the lock. */
  async lookup(): Promise<LeaderAddress | null> {
    const [text, lock] = await Promise.all([this.redis.get(this.keys.leaderApi), this.redis.get(this.keys.leaderLock)]);
    if (!text || !lock) return null;
    try {
      const record = JSON.parse(text) as LeaderAddress;
      return record.holder === lock && typeof record.url === 'string' ? record : null;
    } catch {
      return null;
    }
  }
}
