/**
 * Picks a backend for a new connection. One balancer instance serves one route table entry and
 * is rebuilt when the route changes; `active` counts live across rebuilds (they belong to the
 * route's listener), so least-conn stays correct during reloads.
 */
import type { Backend } from '../protocol';

export interface BalancerContext {
  /** Live connection count per backend id. */
  active(backendId: string): number;
}

export interface Balancer {
  /**
   * Returns an eligible backend not in `exclude` (ids already tried for this client), or
   * undefined when none is left.
   */
  pick(exclude: ReadonlySet<string>): Backend | undefined;
}
