/**
 * Bearer-token scopes and the interface the HTTP server authenticates through. `write` implies
 * `read`; `admin` implies both and may manage tokens.
 */
export type Scope = 'read' | 'write' | 'admin';

export const SCOPES: readonly Scope[] = ['read', 'write', 'admin'];

export interface Principal {
  /** Token name for logs and audit, e.g. `admin` or the name given at creation. */
  name: string;
  scopes: readonly Scope[];
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
