/**
 * The audit log of writes: every request that may change state — any method but GET —
 * is recorded with who sent it (token name and fingerprint, never the token), what (method and
 * path), when, and the result (status and error code). Each entry is a structured log line, and
 * entries with a known sender are also kept in a capped Redis list read at `GET /v3/audit`.
 *
 * Requests without a valid token are logged but not kept in Redis: anyone who can reach the port
 * could otherwise push the real entries out of the capped list.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { DEFAULT_CONTROL_API_OPTIONS } from './api-options';
import type { WriteRecord } from './http-server';

/** One audit entry as stored and as `GET /v3/audit` returns it. */
export interface AuditEntry {
  /** ISO time the reply was sent. */
  at: string;
  /** Token name (`admin`, or the name it was created with); null without a valid token. */
  who: string | null;
  /** The token's fingerprint (first 12 hex digits of its SHA-256); null without a valid token. */
  token_id: string | null;
  method: string;
  path: string;
  status: number;
  /** Error code of a refused or failed request; null on success. */
  code: string | null;
}

export interface AuditLogOptions {
  /** @default 10000 entries kept in Redis, newest first */
  maxEntries?: number;
}

export const DEFAULT_AUDIT_LOG_OPTIONS = { maxEntries: DEFAULT_CONTROL_API_OPTIONS.auditMaxEntries } as const;

export class AuditLog {
  private readonly maxEntries: number;

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly log: Logger,
    options: AuditLogOptions = {},
  ) {
    this.maxEntries = options.maxEntries ?? DEFAULT_AUDIT_LOG_OPTIONS.maxEntries;
  }

  /** Logs one write and, when its sender is known, appends it to the capped list. Never throws. */
  record(write: WriteRecord): void {
    const entry: AuditEntry = {
      at: new Date(write.at).toISOString(),
      who: write.principal?.name ?? null,
      token_id: write.principal?.id ?? null,
      method: write.method,
      path: write.path,
      status: write.status,
      code: write.code,
    };
    this.log.info({ audit: entry }, 'audit');
    if (!write.principal) return;
    this.redis
      .multi()
      .lpush(this.key, JSON.stringify(entry))
      .ltrim(this.key, 0, this.maxEntries - 1)
      .exec()
      .catch((err: Error) => this.log.warn({ err: err.message, audit: entry }, 'audit entry not stored in Redis'));
  }

  /** The newest `limit` entries, newest first. */
  async list(limit: number): Promise<AuditEntry[]> {
    const raw = await this.redis.lrange(this.key, 0, Math.min(limit, this.maxEntries) - 1);
    const entries: AuditEntry[] = [];
    for (const text of raw) {
      try {
        entries.push(JSON.parse(text) as AuditEntry);
      } catch {
        // A foreign value in the list is skipped rather than failing the whole read.
      }
    }
    return entries;
  }
}
