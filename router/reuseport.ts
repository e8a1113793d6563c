/**
 * SO_REUSEPORT listeners, so that several router worker processes (`sf router --workers N`)
 * accept on the same port and the kernel spreads connections over them. Node 20 cannot set
 * SO_REUSEPORT, so the addon creates the bound, listening socket and Node adopts it with
 * `server.listen({ fd })`. Without the addon there is no reuse-port listener: callers fall back
 * to a single worker, or to Node's cluster module.
 */
import { type Server, isIPv6 } from 'node:net';
import { loadNativeBindings } from '../native-bindings';
import { defaultListenBacklog } from '../common';

export interface ReusePortListenOptions {
  /** A numeric IPv4 or IPv6 address. */
  host: string;
  /** 0 lets the kernel choose, which only makes sense for a single worker. */
  port: number;
  /**
   * listen(2) backlog.
   * @default net.core.somaxconn (common/listen-backlog.ts)
   */
  backlog?: number;
  /**
   * For an IPv6 host, refuse IPv4-mapped connections.
   * @default false
   */
  ipv6Only?: boolean;
}

/** True when this process can open SO_REUSEPORT listeners. */
export function reusePortAvailable(): boolean {
  return loadNativeBindings() !== undefined;
}

/**
 * A bound and listening socket descriptor with SO_REUSEPORT set, or `undefined` without the
 * addon. Throws a system error (`code` such as EADDRINUSE, `errno`, `syscall`) when the kernel refuses, e.g. when
 * a process of another user holds the port.
 */
export function openReusePortFd(options: ReusePortListenOptions): number | undefined {
  const bindings = loadNativeBindings();
  if (bindings === undefined) return undefined;
  const host = options.host === 'localhost' ? '127.0.0.1' : options.host;
  return bindings.listenTcp(
    host,
    options.port,
    options.backlog ?? defaultListenBacklog(),
    true,
    isIPv6(host) && options.ipv6Only === true,
  );
}

/**
 * `server.listen()` on an address or on a listening descriptor, with `backlog` either way. Node
 * takes a descriptor's backlog only as the positional argument and ignores `{ fd, backlog }`,
 * listening again with its default of 511, which cut every worker's queue (`--workers`) to 511.
 */
export function listenWithBacklog(
  server: Server,
  where: { fd: number } | { host: string; port: number },
  backlog: number,
  onListening: () => void,
): void {
  if ('fd' in where) server.listen(where, backlog, onListening);
  else server.listen({ ...where, backlog }, onListening);
}

/**
 * Makes `server` listen on a SO_REUSEPORT socket. Resolves false, without listening, when the
 * addon is missing, so the caller can use an ordinary `server.listen()` instead.
 */
export function listenReusePort(server: Server, options: ReusePortListenOptions): Promise<boolean> {
  const fd = openReusePortFd(options);
  if (fd === undefined) return Promise.resolve(false);
  return new Promise<boolean>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    listenWithBacklog(server, { fd }, options.backlog ?? defaultListenBacklog(), () => {
      server.removeListener('error', onError);
      resolve(true);
    });
  });
}
