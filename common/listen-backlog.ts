/**
 * The listen(2) backlog of a route port, and of the engines behind it. A failover or a restarted
 * application makes every client of a primary reconnect at once; a queue shorter than that burst
 * drops SYNs, and each dropped client waits for a retransmit (1 s, then 3 s, 7 s) before it is
 * even accepted. Linux holds at most `net.core.somaxconn` per listener whatever listen() asks, so
 * the default asks for that ceiling (as Envoy does on Linux, and as HAProxy's backlog follows
 * maxconn); `--backlog` asks for less, and a request above the ceiling is reported rather than
 * silently cut.
 */
import { readFileSync } from 'node:fs';

/** Where Linux keeps its ceiling on every listener's queue. */
export const SOMAXCONN_PATH = '/proc/sys/net/core/somaxconn';

/** Node's, nginx's and Redis's default; used where the kernel's ceiling cannot be read. */
export const FALLBACK_LISTEN_BACKLOG = 511;

/** The kernel's ceiling on a listener's queue, or undefined where it cannot be read. */
export function listenBacklogCeiling(path: string = SOMAXCONN_PATH): number | undefined {
  try {
    const value = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(value) && value > 0 ? value : undefined;
  } catch {
    return undefined;
  }
}

/** The default backlog: the kernel's ceiling, else Node's default. */
export function defaultListenBacklog(path: string = SOMAXCONN_PATH): number {
  return listenBacklogCeiling(path) ?? FALLBACK_LISTEN_BACKLOG;
}

export interface ListenBacklog {
  /** What listen() is asked for. */
  requested: number;
  /** What the kernel holds: the request, cut to `net.core.somaxconn` where that is known. */
  effective: number;
  /** `net.core.somaxconn`, when readable. */
  ceiling?: number;
}

/** `ceiling`: listenBacklogCeiling(), undefined where the kernel's is unknown. */
export function resolveListenBacklog(requested: number, ceiling: number | undefined): ListenBacklog {
  const effective = ceiling === undefined ? requested : Math.min(requested, ceiling);
  return ceiling === undefined ? { requested, effective } : { requested, effective, ceiling };
}
