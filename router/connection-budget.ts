/**
 * How many client connections the router may hold, from its descriptor limit. Each relayed
 * connection holds two descriptors (client and backend, on either relay); the rest of the process
 * needs some too, and running out of descriptors fails every route at once. So the
 * limit leaves headroom for the process, the admin endpoint, Redis and each route's listening
 * socket, and each route keeps a small reservation the others cannot take.
 */
import { readProcField } from './proc-file';

/** Descriptors per relayed connection: the client's and the backend's. */
export const FDS_PER_CONNECTION = 2;

/** What the limit leaves aside besides relayed connections, in descriptors. */
export const RESERVED_FDS = {
  /** stdio, epoll, eventfds, the file watcher, logs, the native relay's loop, DNS. */
  process: 48,
  /** The admin listener and the scrapers and health checks connected to it. */
  admin: 16,
  /** The route source's two Redis connections, with room for reconnects and the cache file. */
  redis: 8,
  /** Each route port's listening socket. */
  perPort: 1,
} as const;

/** The most connections reserved per route; the rest of the limit is shared first come. */
export const MAX_ROUTE_RESERVE = 64;

/**
 * The soft RLIMIT_NOFILE of this process, read once from /proc (Node cannot call getrlimit);
 * undefined where /proc is not there or does not say.
 */
export function readFdLimit(limitsFile = '/proc/self/limits'): number | undefined {
  const field = readProcField(limitsFile, /^Max open files\s+(\S+)/m);
  if (field === undefined || field === 'unlimited') return undefined;
  const n = Number(field);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** Descriptors reserved for everything but relayed connections, with `ports` route ports open. */
export function reservedFds(ports: number): number {
  return RESERVED_FDS.process + RESERVED_FDS.admin + RESERVED_FDS.redis + RESERVED_FDS.perPort * ports;
}

/**
 * The router-wide connection limit: the configured maximum, lowered to what the descriptor limit
 * holds after the reserve. Never negative; 0 means the descriptor limit cannot carry one more.
 */
export function globalConnectionLimit(maxConnections: number, fdLimit: number | undefined, ports: number): number {
  if (fdLimit === undefined) return maxConnections;
  const fromFds = Math.floor((fdLimit - reservedFds(ports)) / FDS_PER_CONNECTION);
  return Math.max(0, Math.min(maxConnections, fromFds));
}

/**
 * Connections reserved for each route: at most half of the limit is reserved in all, so routes
 * still share most of it, and at most MAX_ROUTE_RESERVE each.
 */
export function routeReserve(limit: number, routes: number): number {
  if (routes <= 1) return 0;
  return Math.min(MAX_ROUTE_RESERVE, Math.floor(limit / (2 * routes)));
}
