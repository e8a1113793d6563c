/**
 * Bearer-token scopes and the interface the HTTP server authenticates through. `write` implies
 * `read`; `admin` implies both and may manage tokens.
 */
import type { Scope } from '../state/token-store';

export { SCOPES, type Scope } from '../state/token-store';

export interface Principal {
  /** Token name for logs and audit, e.g. `admin` or the name given at creation. */
  name: string;
  /**
   * A short fingerprint of the token (the first 12 hex digits of its SHA-256) that tells apart
   * tokens of one name in the audit log; never the token itself.
   */
  id?: string;
  scopes: readonly Scope[];
  /**
   * The Cloud Foundry scopes of a JWT (`routing.routes.read`...), present only for JWTs: where an
   * endpoint names a CF scope, a JWT needs exactly that one (http-server.ts `requireScope`).
   */
  cfScopes?: readonly string[];
}

export interface Authenticator {
  /** The principal a bearer token stands for, or null for an unknown token. */
  authenticate(token: string): Promise<Principal | null>;
}

const RANK: Record<Scope, number> = { read: 1, write: 2, admin: 3 };

/** True when the principal holds `needed` or a scope that implies it. */
export function hasScope(principal: Principal, needed: Scope): boolean {
  return principal.scopes.some((s) => RANK[s] >= RANK[needed]);
}
