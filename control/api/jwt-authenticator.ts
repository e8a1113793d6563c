/**
 * UAA-style JWT bearer tokens, as Cloud Foundry's components present them to the routing API.
 * A token is verified with `jose` against one configured key (an RS256 public key in PEM, a JWKS
 * file, or for development an HS256 secret), its issuer and its expiry; its `scope` claim's CF
 * routing scopes decide what it may do. Tokens that are not JWTs go to our own authenticator, so
 * opaque tokens keep working next to JWTs.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createLocalJWKSet, importSPKI, jwtVerify, type JWTPayload, type JWTVerifyGetKey, type KeyObject } from 'jose';
import { ErrorCode, SfError } from '../../common';
import type { Authenticator, Principal, Scope } from './auth';
import { CF_ROUTING_SCOPES } from './cf-scopes';

export interface JwtVerifierOptions {
  /** PEM file of an RS256 public key (UAA's `token_key`). */
  publicKeyFile?: string;
  /** JWKS file (`{"keys": [...]}`, UAA's `token_keys`); tokens pick their key by `kid`. */
  jwksFile?: string;
  /** File holding an HS256 secret, for development (`sf token issue` signs with it). */
  hs256SecretFile?: string;
  /** The `iss` every token must carry, e.g. `https://uaa.example.com/oauth/token`. */
  issuer: string;
  /** When set, the `aud` a token must include. */
  audience?: string;
  /** @default 30 s of clock skew allowed on `exp` and `nbf` */
  clockToleranceSeconds?: number;
}

/** Hex digits of a token's SHA-256 that identify it in the audit log, as for opaque tokens. */
const TOKEN_ID_HEX_DIGITS = 12;

/** An HS256 secret shorter than this is refused: it could be guessed offline from one token. */
export const MIN_HS256_SECRET_BYTES = 32;

type VerifyKey = KeyObject | Uint8Array | JWTVerifyGetKey;

/**
 * Our scopes for CF's routing scopes, for endpoints outside the routing API (which check the CF
 * scope itself): reading either kind of routing data reads, writing routes writes, managing router
 * groups is an administrator's job.
 */
const SCOPE_FOR: Record<string, Scope> = {
  [CF_ROUTING_SCOPES.routesRead]: 'read',
  [CF_ROUTING_SCOPES.routerGroupsRead]: 'read',
  [CF_ROUTING_SCOPES.routesWrite]: 'write',
  [CF_ROUTING_SCOPES.routerGroupsWrite]: 'admin',
};

export class JwtAuthenticator implements Authenticator {
  private constructor(
    private readonly key: VerifyKey,
    private readonly algorithms: string[],
    private readonly opts: JwtVerifierOptions,
    private readonly fallback: Authenticator,
  ) {}

  /** Loads the configured key; exactly one of the three key options must be set. */
  static async create(opts: JwtVerifierOptions, fallback: Authenticator): Promise<JwtAuthenticator> {
    const given = [opts.publicKeyFile, opts.jwksFile, opts.hs256SecretFile].filter((f) => f !== undefined);
    if (given.length !== 1) {
      throw new SfError(
        ErrorCode.InvalidOption,
        'JWT verification needs exactly one of a public key, a JWKS file or an HS256 secret file',
        'jwt',
      );
    }
    if (!opts.issuer) throw new SfError(ErrorCode.InvalidOption, 'JWT verification needs an issuer', 'jwt-issuer');
    const read = async (file: string, field: string) => {
      try {
        return await readFile(file, 'utf8');
      } catch (err) {
        throw new SfError(ErrorCode.InvalidOption, `${field} ${file}: ${(err as Error).message}`, field);
      }
    };
    try {
      if (opts.publicKeyFile) {
        const pem = await read(opts.publicKeyFile, 'jwt-public-key');
        return new JwtAuthenticator(await importSPKI(pem.trim(), 'RS256'), ['RS256'], opts, fallback);
      }
      if (opts.jwksFile) {
        const jwks = JSON.parse(await read(opts.jwksFile, 'jwt-jwks')) as Parameters<typeof createLocalJWKSet>[0];
        return new JwtAuthenticator(createLocalJWKSet(jwks), ['RS256'], opts, fallback);
      }
      const secret = await readHs256Secret(opts.hs256SecretFile as string);
      return new JwtAuthenticator(secret, ['HS256'], opts, fallback);
    } catch (err) {
      if (err instanceof SfError) throw err;
      throw new SfError(ErrorCode.InvalidOption, `JWT key: ${(err as Error).message}`, 'jwt');
    }
  }

  /** The same verifier with another authenticator for tokens that are not JWTs. */
  withFallback(fallback: Authenticator): JwtAuthenticator {
    return new JwtAuthenticator(this.key, this.algorithms, this.opts, fallback);
  }

  async authenticate(token: string): Promise<Principal | null> {
    if (!looksLikeJwt(token)) return this.fallback.authenticate(token);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.key as KeyObject, {
        algorithms: this.algorithms,
        issuer: this.opts.issuer,
        audience: this.opts.audience,
        clockTolerance: this.opts.clockToleranceSeconds ?? 30,
        requiredClaims: ['exp'],
      }));
    } catch {
      // Expired, wrong issuer, bad signature: all a plain 401, never which one (no oracle).
      return null;
    }
    return principalOf(payload, token);
  }
}

/** Reads an HS256 secret file (trailing newline dropped) and checks its length. */
export async function readHs256Secret(file: string): Promise<Uint8Array> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new SfError(ErrorCode.InvalidOption, `jwt-secret-file ${file}: ${(err as Error).message}`, 'jwt-secret-file');
  }
  const secret = new TextEncoder().encode(text.replace(/\r?\n$/, ''));
  if (secret.length < MIN_HS256_SECRET_BYTES) {
    throw new SfError(
      ErrorCode.InvalidOption,
      `jwt-secret-file ${file} must hold at least ${MIN_HS256_SECRET_BYTES} bytes`,
      'jwt-secret-file',
    );
  }
  return secret;
}

/** Three base64url parts, the first a JSON header (`eyJ` is `{"`): our opaque tokens never are. */
function looksLikeJwt(token: string): boolean {
  return token.startsWith('eyJ') && /^[\w-]+\.[\w-]+\.[\w-]*$/.test(token);
}

/** UAA writes `scope` as an array; other OAuth servers as one space-separated string. */
function scopesOf(payload: JWTPayload): string[] {
  const raw = payload.scope;
  if (Array.isArray(raw)) return raw.filter((s): s is string => typeof s === 'string');
  if (typeof raw === 'string') return raw.split(' ').filter(Boolean);
  return [];
}

function principalOf(payload: JWTPayload, token: string): Principal {
  const cfScopes = scopesOf(payload);
  const scopes = [...new Set(cfScopes.map((s) => SCOPE_FOR[s]).filter((s): s is Scope => s !== undefined))];
  const who = [payload.client_id, payload.user_name, payload.sub].find((v) => typeof v === 'string' && v !== '');
  return {
    name: `jwt:${String(who ?? 'unnamed')}`.slice(0, 100),
    id: createHash('sha256').update(token).digest('hex').slice(0, TOKEN_ID_HEX_DIGITS),
    scopes,
    cfScopes,
  };
}
