/**
 * `sf control`: the HTTP API over state in Redis. Holds no state of its own (a restart loses
 * nothing), so several can run against one Redis. Later parts (service instances, cells, the
 * leader lock) register their endpoints here the same way the routing API does.
 */
import { createRedis } from '../common/redis-connection';
import pino from 'pino';
import { registerEventsApi } from './api/routes-events';
import { registerRoutingApi } from './api/routes-routing';
import { registerTokensApi } from './api/routes-tokens';
import { HttpServer } from './api/http-server';
import { TokenAuthenticator, type StaticToken } from './api/token-authenticator';
import { DEFAULT_CONTROL_SERVER_OPTIONS, type ControlServerOptions } from './control-options';
import { EventHub } from './events/event-hub';
import { RouterGroupStore } from './state/router-group-store';
import { keyLayout } from '../protocol/keys';
import { TcpRouteStore } from './state/tcp-route-store';
import { TokenStore } from './state/token-store';
import { withDefaults } from '../common/options';
import { RouteTtlSweeper } from './sweeper/route-ttl-sweeper';
import { startServicePlane, type ServicePlane } from './services';

export { DEFAULT_CONTROL_SERVER_OPTIONS, type ControlServerOptions };

export interface ControlServer {
  /** Base URL, e.g. `http://127.0.0.1:7600`. */
  readonly url: string;
  readonly port: number;
  readonly redisUrl: string;
  readonly groups: RouterGroupStore;
  readonly routes: TcpRouteStore;
  readonly sweeper: RouteTtlSweeper;
  readonly services: ServicePlane;
  close(): Promise<void>;
}

export async function startControlServer(options: ControlServerOptions = {}): Promise<ControlServer> {
  const opts = withDefaults(DEFAULT_CONTROL_SERVER_OPTIONS, options);
  const log = opts.logger ?? pino({ name: 'control', level: process.env.SF_LOG_LEVEL ?? 'info' });
  const redis = createRedis(opts.redisUrl, { connectionName: 'sf-control', maxRetriesPerRequest: 2 });
  redis.on('error', (err: Error) => log.warn({ err: err.message }, 'redis connection problem'));
  const keys = keyLayout(opts.keyPrefix);
  const groups = new RouterGroupStore(redis, keys);
  const routes = new TcpRouteStore(redis, keys, groups, { now: opts.now });
  const tokens = new TokenStore(redis, keys);
  const hub = new EventHub(opts.redisUrl, keys.routeEvents, (err) => log.warn({ err: err.message }, 'event feed problem'));
  const sweeper = new RouteTtlSweeper(routes, {
    intervalMs: opts.sweepIntervalMs,
    onError: (err) => log.warn({ err: (err as Error).message }, 'TTL sweep failed'),
  });
  const statics: StaticToken[] = [...(opts.staticTokens ?? [])];
  if (opts.adminToken) statics.push({ name: 'admin', token: opts.adminToken, scopes: ['admin'] });
  const server = new HttpServer({
    authenticator: new TokenAuthenticator(statics, tokens),
    bodyLimitBytes: opts.bodyLimitBytes,
    onInternalError: (err, method, path) => log.error({ err, method, path }, 'request failed'),
  });

  try {
    await groups.ensureDefault(opts.defaultReservablePorts);
    await hub.start();
  } catch (err) {
    redis.disconnect();
    await hub.stop();
    throw err;
  }
  server.route('get', '/health', null, async () => ({
    body: { ok: true, redis: redis.status === 'ready' },
  }));
  // What a router started with `--control URL` needs to subscribe on its own.
  server.route('get', '/v3/info', 'read', async () => ({
    body: { redis_url: opts.redisUrl, key_prefix: opts.keyPrefix },
  }));
  registerRoutingApi(server, { groups, routes });
  registerTokensApi(server, tokens);
  const unhookEvents = registerEventsApi(server, hub);
  const services = await startServicePlane(
    server,
    { redis, redisUrl: opts.redisUrl, keyPrefix: opts.keyPrefix, groups, routes, logger: log },
    opts.services,
  );
  const port = await server.listen(opts.host, opts.port);
  sweeper.start();
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  log.info({ host: opts.host, port }, 'control API listening');

  return {
    url: `http://${host}:${port}`,
    port,
    redisUrl: opts.redisUrl,
    groups,
    routes,
    sweeper,
    services,
    async close() {
      await services.close();
      unhookEvents();
      await sweeper.stop();
      server.close();
      await hub.stop();
      redis.disconnect();
    },
  };
}
