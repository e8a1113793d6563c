/**
 * Resolves bearer tokens: the admin token(s), tokens from a config file, then tokens created
 * through the API (stored hashed in Redis).
 */
import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { schemaError, ErrorCode, SfError } from '../../common';
import { hashToken, type TokenStore } from '../state/token-store';
import { SCOPES, type Authenticator, type Principal, type Scope } from './auth';

/** Hex digits of a token's SHA-256 that identify it in the audit log (48 bits: no way back to it). */
const TOKEN_ID_HEX_DIGITS = 12;

export interface StaticToken {
  name: string;
  token: string;
  scopes: Scope[];
}

const tokenFileSchema = z.array(
  z
    .object({
      name: z.string().min(1).max(100),
      token: z.string().min(16, 'must be at least 16 characters'),
      scopes: z.array(z.enum(SCOPES as [Scope, ...Scope[]])).min(1),
    })
    .strict(),
);

/** Reads a tokens file: `[{"name": "ci", "token": "...", "scopes": ["read"]}]`. */
export async function loadTokensFile(file: string): Promise<StaticToken[]> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new SfError(ErrorCode.InvalidRequest, `tokens file ${file}: ${(err as Error).message}`, 'tokens-file');
  }
  const parsed = tokenFileSchema.safeParse(raw);
  if (!parsed.success) throw schemaError(parsed.error, ErrorCode.InvalidRequest, 'tokens-file');
  return parsed.data;
}

export class TokenAuthenticator implements Authenticator {
  // Static tokens are compared by hash so every comparison has the same length.
  private readonly statics: Array<{ hash: Buffer; principal: Principal }>;

  constructor(
    staticTokens: StaticToken[],
    private readonly store: TokenStore | null,
  ) {
    this.statics = staticTokens.map((t) => {
      const hex = hashToken(t.token);
      return {
        hash: Buffer.from(hex, 'hex'),
        principal: { name: t.name, id: hex.slice(0, TOKEN_ID_HEX_DIGITS), scopes: t.scopes },
      };
    });
  }

  async authenticate(token: string): Promise<Principal | null> {
    const hex = hashToken(token);
    const hash = Buffer.from(hex, 'hex');
    for (const s of this.statics) if (timingSafeEqual(s.hash, hash)) return s.principal;
    const record = await this.store?.lookup(token);
    return record ? { name: record.name, id: hex.slice(0, TOKEN_ID_HEX_DIGITS), scopes: record.scopes } : null;
  }
}
