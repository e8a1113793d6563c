/**
 * Router-wide options. Per-route limits live in the route model (DEFAULT_ROUTE_LIMITS).
 */
import type { Relay } from './relay';
import { defaultListenBacklog, type Logger } from '../common';
import type { ListenAddress } from './self-address';
import { DEFAULT_LISTEN_RETRY_MS } from './listen-failures';

export type DisconnectPolicy = 'keep-last' | 'fail-closed';

export interface RouterOptions {
  /**
   * Address the route ports listen on.
   * @default '127.0.0.1' (every listen address defaults to loopback; use '0.0.0.0' to serve a network)
   */
  bindHost: string;
  /**
   * Connections across all routes; a client beyond it is closed at once. Lowered to what the
   * descriptor limit holds (router/connection-budget.ts).
   * @default 100000
   */
  maxConnections: number;
  /**
   * The descriptor limit the connection limit is derived from.
   * @default the soft RLIMIT_NOFILE, read when the router is created (none where it cannot be read)
   */
  fdLimit?: number;
  /**
   * Addresses this process listens on besides the route ports (the admin endpoint): no backend
   * may be one of them, nor a route port (router/self-address.ts).
   * @default []
   */
  ownAddresses: ListenAddress[];
  /**
   * At most one warning per this interval for each reached limit (and each refused self-loop).
   * @default 10000
   */
  limitLogIntervalMs: number;
  /**
   * What to do while the route source has lost its upstream (Redis, control).
   * @default 'keep-last'
   */
  onDisconnect: DisconnectPolicy;
  /**
   * TCP keepalive probe delay on both sides; 0 disables keepalive.
   * @default 30000
   */
  keepAliveMs: number;
  /**
   * listen(2) backlog per route port (common/listen-backlog.ts).
   * @default net.core.somaxconn, or 511 where it cannot be read
   */
  backlog: number;
  /**
   * Listen with SO_REUSEPORT (router/reuseport.ts), so that several router worker processes
   * share each route port. Needs the native addon; without it the port is opened normally.
   * @default false
   */
  reusePort: boolean;
  /**
   * On a TLS port shared by server name, how long to wait for the ClientHello.
   * @default 5000
   */
  clientHelloTimeoutMs: number;
  /**
   * How often route ports that failed to open (another process holds the port) are tried again.
   * @default 2000
   */
  listenRetryMs: number;
  /**
   * The fewest new native ports one table change opens through one listening socket per set of
   * accept options, steered by a BPF program (docs/native-relay.md, "Steering many ports to one
   * socket"); Infinity: never. Default: SF_NATIVE_STEER_MIN_PORTS, else 256.
   */
  steerMinPorts?: number;
  /** The byte mover; the JS relay when not given. */
  relay?: Relay;
  logger?: Logger;
}

export const DEFAULT_ROUTER_OPTIONS: Readonly<Omit<RouterOptions, 'relay' | 'logger'>> = {
  bindHost: '127.0.0.1',
  maxConnections: 100_000,
  ownAddresses: [],
  limitLogIntervalMs: 10_000,
  onDisconnect: 'keep-last',
  keepAliveMs: 30_000,
  backlog: defaultListenBacklog(),
  reusePort: false,
  clientHelloTimeoutMs: 5_000,
  listenRetryMs: DEFAULT_LISTEN_RETRY_MS,
};
