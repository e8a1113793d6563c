/**
 * Waits until every live router of a group reports (in its heartbeat key) a table version at
 * least the one that carried a fence. Routers heartbeat right after applying a table, so this is
 * usually a few milliseconds; a router that does not confirm within the bound is named, and the
 * fence step counts as degraded rather than blocking failover forever.
 */
import type { RouterGroup } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';

export interface RouterAck {
  /** Every live router confirmed. */
  ok: boolean;
  version: number;
  routers: number;
  /** Router ids still below `version` when the wait ended. */
  lagging: string[];
  waitedMs: number;
}

export async function waitForRouters(
  routes: TcpRouteStore,
  group: RouterGroup,
  version: number,
  timeoutMs: number,
  pollMs = 10,
): Promise<RouterAck> {
  const t0 = Date.now();
  for (;;) {
    const beats = await routes.routers(group);
    const lagging = beats.filter((b) => b.version < version).map((b) => b.routerId);
    const waitedMs = Date.now() - t0;
    if (lagging.length === 0) return { ok: true, version, routers: beats.length, lagging, waitedMs };
    if (waitedMs >= timeoutMs) return { ok: false, version, routers: beats.length, lagging, waitedMs };
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
