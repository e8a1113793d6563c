/**
 * API tokens managed through the API. Only a SHA-256 of each token is stored, so a copy of the
 * Redis data does not hand out credentials.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';
import { withCasRetry } from './cas-commit';
import type { KeyLayout } from '../../protocol';

/** Bearer-token scopes: `write` implies `read`; `admin` implies both and may manage tokens. */
export type Scope = 'read' | 'write' | 'admin';

export const SCOPES: readonly Scope[] = ['read', 'write', 'admin'];

export interface TokenRecord {
  name: string;
  scopes: Scope[];
  created_at: string;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function generateToken(): string {
  return `sf_${randomBytes(24).toString('base64url')}`;
}

export class TokenStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
  ) {}

  async lookup(token: string): Promise<TokenRecord | null> {
    const text = await this.redis.hget(this.keys.tokens, hashToken(token));
    return text ? (JSON.parse(text) as TokenRecord) : null;
  }

  async list(): Promise<TokenRecord[]> {
    const all = await this.redis.hvals(this.keys.tokens);
    return all.map((t) => JSON.parse(t) as TokenRecord).sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Creates a token; the secret is returned once and never stored. */
  async create(name: string, scopes: Scope[]): Promise<{ token: string; record: TokenRecord }> {
    const token = generateToken();
    const record: TokenRecord = { name, scopes, created_at: new Date().toISOString() };
    return withCasRetry(async () => {
      const { version, entries } = await this.readAll();
      if (entries.some(([, r]) => r.name === name)) {
        throw new SfError(ErrorCode.InvalidRequest, `name '${name}' is already taken`, 'name');
      }
      return {
        guards: [{ key: this.keys.tokensVersion, expected: version }],
        ops: [{ cmd: 'HSET', key: this.keys.tokens, field: hashToken(token), value: JSON.stringify(record) }],
        result: { token, record },
      };
    }, this.redis);
  }

  async delete(name: string): Promise<boolean> {
    return withCasRetry<boolean>(async () => {
      const { version, entries } = await this.readAll();
      const found = entries.find(([, r]) => r.name === name);
      if (!found) return { done: false };
      return {
        guards: [{ key: this.keys.tokensVersion, expected: version }],
        ops: [{ cmd: 'HDEL', key: this.keys.tokens, field: found[0] }],
        result: true,
      };
    }, this.redis);
  }

  private async readAll(): Promise<{ version: number; entries: Array<[string, TokenRecord]> }> {
    const res = await this.redis.multi().get(this.keys.tokensVersion).hgetall(this.keys.tokens).exec();
    const all = (res?.[1]?.[1] as Record<string, string> | undefined) ?? {};
    return {
      version: Number(res?.[0]?.[1] ?? 0),
      entries: Object.entries(all).map(([hash, text]) => [hash, JSON.parse(text) as TokenRecord]),
    };
  }
}
