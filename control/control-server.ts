/**
 * `sf control`: the HTTP API over state in Redis. Holds no state of its own (a restart loses
 * nothing), so several can run against one Redis. Later parts (service instances, cells, the
 * leader lock) register their endpoints here the same way the routing API does.
 */
import { readFile } from 'node:fs/promises';
import { createRedis, createLogger, withDefaults } from '../common';
import { watchHttpsFiles } from './api/https-files-watch';
import { AuditLog } from './api/audit-log';
import { publicRedisUrl } from './api/public-redis-url';
import { registerAuditApi } from './api/routes-audit';
import { registerEventsApi } from './api/routes-events';
import { registerRoutingApi } from './api/routes-routing';
import { registerTokensApi } from './api/routes-tokens';
import { HttpServer, type EndpointInfo } from './api/http-server';
import { TokenAuthenticator, type StaticToken } from './api/token-authenticator';
import { JwtAuthenticator } from './api/jwt-authenticator';
import { DEFAULT_CONTROL_SERVER_OPTIONS, type ControlServerOptions } from './control-options';
import { EventHub } from './events/event-hub';
import { RouterGroupStore } from './state/router-group-store';
import { keyLayout } from '../protocol';
import { TcpRouteStore } from './state/tcp-route-store';
import { TokenStore } from './state/token-store';
import { RouteTtlSweeper } from './sweeper/route-ttl-sweeper';
import { startServicePlane, type ServicePlane } from './service-plane';
import { ControlMetrics } from './control-metrics';
import { registerConsole } from './api/routes-console';
import { CellDirectory } from './services/cell-directory';

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
  /** Every endpoint the API serves (tests probe each one). */
  readonly endpoints: readonly EndpointInfo[];
  /** Looks at the HTTPS certificate files now and serves them if they changed (also on SIGHUP). */
  checkTls(): Promise<void>;
  close(): Promise<void>;
}

export async function startControlServer(options: ControlServerOptions = {}): Promise<ControlServer> {
  const opts = withDefaults(DEFAULT_CONTROL_SERVER_OPTIONS, options);
  const log = opts.logger ?? createLogger('control');
  // The JWT key is read first: a bad key file stops control before it opens any connection.
  const jwtFor = opts.jwt ? await JwtAuthenticator.create(opts.jwt, { authenticate: async () => null }) : null;
  const redis = createRedis(opts.redisUrl, { connectionName: 'sf-control', maxRetriesPerRequest: 2 });
  redis.on('error', (err: Error) => log.warn({ err: err.message }, 'redis connection problem'));
  const keys = keyLayout(opts.keyPrefix);
  const groups = new RouterGroupStore(redis, keys);
  const routes = new TcpRouteStore(redis, keys, groups, { now: opts.now });
  const tokens = new TokenStore(redis, keys);
  const hub = new EventHub(opts.redisUrl, keys.routeEvents, (err) =>
    log.warn({ err: err.message }, 'event feed problem'),
  );
  const sweeper = new RouteTtlSweeper(routes, {
    intervalMs: opts.sweepIntervalMs,
    onError: (err) => log.warn({ err: (err as Error).message }, 'TTL sweep failed'),
  });
  const statics: StaticToken[] = [...(opts.staticTokens ?? [])];
  if (opts.adminToken) statics.push({ name: 'admin', token: opts.adminToken, scopes: ['admin'] });
  const audit = new AuditLog(redis, keys.audit, log, { maxEntries: opts.api?.auditMaxEntries });
  const opaque = new TokenAuthenticator(statics, tokens);
  const server = new HttpServer({
    authenticator: jwtFor ? jwtFor.withFallback(opaque) : opaque,
    bodyLimitBytes: opts.bodyLimitBytes,
    maxUrlBytes: opts.api?.maxUrlBytes,
    maxHeaderBytes: opts.api?.maxHeaderBytes,
    eventBacklogLimitBytes: opts.api?.eventBacklogLimitBytes,
    onInternalError: (err, method, path) => log.error({ err, method, path }, 'request failed'),
    onWrite: (write) => audit.record(write),
    ...(opts.tls ? { tls: { certFile: opts.tls.certFile, keyFile: opts.tls.keyFile } } : {}),
  });

  try {
    await groups.ensureDefault(opts.defaultReservablePorts);
    await hub.start();
  } catch (err) {
    redis.disconnect();
    await hub.stop();
    throw err;
  }
  // Healthy means able to serve: the state store answers a PING and the event feed is subscribed.
  server.route('get', '/health', null, async () => {
    const redisOk = await redisAnswers(redis);
    const ok = redisOk && hub.connected();
    return { status: ok ? 200 : 503, body: { ok, redis: redisOk, events: hub.connected() } };
  });
  // Where a router started with `--control URL` subscribes; never with the store's credentials,
  // which a router gets from its own environment or file.
  server.route('get', '/v3/info', 'read', async () => ({
    body: { redis_url: publicRedisUrl(opts.redisUrl), key_prefix: opts.keyPrefix },
  }));
  // Like every other endpoint but /health, metrics need a token (read scope): Prometheus sends
  // one with `authorization: {credentials_file: ...}` (sf prometheus-config).
  const metrics = new ControlMetrics();
  server.route('get', '/metrics', 'read', async () => ({
    raw: { contentType: metrics.registry.contentType, data: await metrics.registry.metrics() },
  }));
  registerConsole(server, opts.routerAdminUrls ?? [], opts.adminToken);
  registerAuditApi(server, audit);
  registerRoutingApi(
    server,
    { groups, routes },
    { maxTtlSeconds: opts.api?.maxRouteTtlSeconds, compat: opts.api?.routingCompat },
  );
  registerTokensApi(server, tokens);
  const unhookEvents = registerEventsApi(server, hub);
  const services = await startServicePlane(
    server,
    {
      redis,
      redisUrl: opts.redisUrl,
      keyPrefix: opts.keyPrefix,
      groups,
      routes,
      logger: log,
      metrics,
      ...(opts.tls?.caFile ? { leaderCa: await readFile(opts.tls.caFile) } : {}),
    },
    opts.services,
  );
  const cellDirectory = new CellDirectory(redis, keys);
  metrics.watchInstances({ services: () => services.store.list(), cells: () => cellDirectory.snapshot() });
  const port = await server.listen(opts.host, opts.port);
  const httpsWatch = opts.tls
    ? await watchHttpsFiles(opts.tls, (files) => server.reloadTls(files), log, opts.tls.reloadCheckMs)
    : undefined;
  sweeper.start();
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  log.info({ host: opts.host, port }, 'control API listening');
  // A wildcard listen address is not an address to reach; on this host loopback reaches it.
  const listenHost: string = opts.host;
  const reachable = listenHost === '0.0.0.0' ? '127.0.0.1' : listenHost === '::' ? '[::1]' : host;
  const scheme = opts.tls ? 'https' : 'http';
  services.advertise(`${scheme}://${reachable}:${port}`);

  return {
    url: `${scheme}://${host}:${port}`,
    port,
    redisUrl: opts.redisUrl,
    groups,
    routes,
    sweeper,
    services,
    endpoints: server.endpoints(),
    checkTls: () => httpsWatch?.check() ?? Promise.resolve(),
    async close() {
      httpsWatch?.stop();
      await services.close();
      unhookEvents();
      await sweeper.stop();
      server.close();
      await hub.stop();
      redis.disconnect();
    },
  };
}

/** How long `/health` waits for the state store's PING. */
const HEALTH_PING_TIMEOUT_MS = 1_000;

/** True when Redis answers a PING in time; false at once while the connection is down. */
async function redisAnswers(redis: ReturnType<typeof createRedis>): Promise<boolean> {
  if (redis.status !== 'ready') return false;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), HEALTH_PING_TIMEOUT_MS);
  });
  try {
    return await Promise.race([redis.ping().then((r) => r === 'PONG'), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
