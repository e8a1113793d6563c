/**
 * The body of `sf router`, loaded only when that command runs so that client commands
 * (`sf routes`, `sf services`...) start without loading the data plane.
 */
import { hostname } from 'node:os';
// Specific modules rather than the router's index: a standalone router never loads the Redis
// client. A smaller heap matters on the relay path, because every relayed chunk is a fresh
// Buffer and the full collections that external memory triggers cost in proportion to the heap.
import { Router } from '../router/router';
import { FileRouteSource } from '../router/route-source-file';
import { createRouterMetrics } from '../router/metrics';
import { availableParallelism } from 'node:os';
import { selectRelay, type RelayChoice } from '../router/relay-select';
import { startAdminServer } from '../router/admin-server';
import type { RouteSource } from '../router/route-source';
import { routerWorkerIndex, superviseRouterWorkers, workerAdminPort } from '../router/router-workers';
import { createLogger } from '../common/logger';
import { controlUrlForListen, discoverAdminToken, ensureAdminToken } from '../control/admin-token';
import { claimPort } from '../common';
import { UsageError, parseHostPort, parseIntFlag, stopOnSignals } from './cli-support';

export interface RouterFlags {
  routes?: string;
  redis?: string;
  keyPrefix?: string;
  control?: string;
  routerGroup: string;
  routerId?: string;
  cacheFile?: string;
  admin: string;
  bind: string;
  maxConnections: string;
  keepaliveMs: string;
  backlog: string;
  onDisconnect: 'keep-last' | 'fail-closed';
  relay: RelayChoice;
  workers: string;
  threads?: string;
}

async function routeSource(flags: RouterFlags): Promise<RouteSource> {
  const chosen = [flags.routes && '--routes', flags.redis && '--redis', flags.control && '--control'].filter(Boolean);
  if (chosen.length > 1) throw new UsageError(`${chosen.join(' and ')} are exclusive: a router serves one source`);
  if (flags.routes) return new FileRouteSource(flags.routes);
  const pushed = {
    routerGroup: flags.routerGroup,
    routerId: flags.routerId ?? `${hostname()}-${process.pid}`,
    cacheFile: flags.cacheFile,
  };
  if (flags.control) {
    const { routeSourceFromControl } = await import('../router/route-source-control');
    return routeSourceFromControl(flags.control, await discoverAdminToken(process.env, flags.control), pushed);
  }
  const redisUrl = flags.redis ?? process.env.SF_REDIS_URL;
  if (redisUrl) {
    const { RedisRouteSource } = await import('../router/route-source-redis');
    return new RedisRouteSource({ redisUrl, keyPrefix: flags.keyPrefix ?? process.env.SF_KEY_PREFIX, ...pushed });
  }
  throw new UsageError(
    'sf router needs --routes FILE, --control URL, or --redis URL (or SF_REDIS_URL) for a pushed table',
  );
}

export async function runRouter(flags: RouterFlags): Promise<void> {
  // --workers N: this process supervises N workers (router/router-workers.ts), which run the code
  // below with SO_REUSEPORT listeners and admin ports admin, admin+1, ...
  const workers = parseIntFlag(flags.workers, '--workers', 1, 256);
  const worker = routerWorkerIndex();
  if (workers > 1 && worker === undefined) return superviseRouterWorkers(workers, createLogger('router'));
  // One process uses every core through relay threads; a worker process (the older way to use
  // more cores) runs one thread unless told otherwise.
  const threads =
    flags.threads !== undefined
      ? parseIntFlag(flags.threads, '--threads', 1, 256)
      : process.env.SF_NATIVE_RELAY_THREADS !== undefined
        ? undefined
        : workers > 1
          ? 1
          : availableParallelism();
  const admin = parseHostPort(flags.admin, '--admin');
  admin.port = workerAdminPort(admin.port, worker);
  const source = await routeSource(flags);
  const router = new Router({
    bindHost: flags.bind,
    maxConnections: parseIntFlag(flags.maxConnections, '--max-connections', 1),
    keepAliveMs: parseIntFlag(flags.keepaliveMs, '--keepalive-ms', 0),
    backlog: parseIntFlag(flags.backlog, '--backlog', 1, 65535),
    onDisconnect: flags.onDisconnect,
    relay: selectRelay(flags.relay, { threads }),
    reusePort: workers > 1,
    // No backend may be the admin endpoint; with port 0 it is known only once listening.
    ownAddresses: admin.port !== 0 ? [admin] : [],
  });
  await router.start(source);
  // The admin token is SF_API_TOKEN, else the token file named after the admin address (written
  // when missing, like control's), so the port is settled first when it is 0.
  const adminPort = admin.port === 0 ? await claimPort(admin.host, 0) : admin.port;
  const adminToken = await ensureAdminToken(process.env, controlUrlForListen(admin.host, adminPort));
  const adminServer = await startAdminServer(
    router,
    createRouterMetrics(router),
    admin.host,
    adminPort,
    adminToken.token,
  );
  if (admin.port === 0) router.addOwnAddress({ host: admin.host, port: adminServer.port });
  router.logger.info(
    {
      admin: `${admin.host}:${adminServer.port}`,
      ...(adminToken.file ? { adminTokenFile: adminToken.file } : {}),
      relay: router.relay.kind,
      source: source.description,
      routes: router.currentTable().routes.length,
    },
    'router started',
  );

  process.on('SIGHUP', () => {
    router.logger.info('SIGHUP: reloading routes');
    void router.reload();
  });
  stopOnSignals(router.logger, 'router', () => {
    adminServer.close();
    return router.close();
  });
}
