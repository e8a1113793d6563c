/**
 * Warnings that may fire once per refused client (a connection limit reached, a self-loop) are
 * logged at most once per interval and key, with the count of those left out, so a flood of
 * clients cannot turn into a flood of log lines.
 */
import type { Logger } from '../common';

export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Logs unless `key` was logged less than the interval ago; returns whether it logged. */
  warn(key: string, fields: Record<string, unknown>, message: string): boolean {
    const t = this.now();
    const entry = this.last.get(key);
    if (entry && t - entry.at < this.intervalMs) {
      entry.suppressed++;
      return false;
    }
    this.logger.warn({ ...fields, suppressedSinceLast: entry?.suppressed ?? 0 }, message);
    this.last.set(key, { at: t, suppressed: 0 });
    return true;
  }
}
