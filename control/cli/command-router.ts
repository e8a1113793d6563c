/**
 * `sf router`: runs a router from a static route file (standalone, no Redis or control) or
 * from a router group's table pushed through Redis.
 */
import { hostname } from 'node:os';
import { Command, Option } from 'commander';
import { Router, FileRouteSource, createRouterMetrics, selectRelay, startAdminServer, type RelayChoice, type RouteSource, DEFAULT_ROUTER_OPTIONS, DEFAULT_ROUTER_GROUP } from '../../router';
import { RedisRouteSource } from '../../router/route-source-redis';
import { routerWorkerIndex, superviseRouterWorkers, workerAdminPort } from '../../router/router-workers';
import { createLogger } from '../../router/logger';
import { UsageError, exitWithError, parseHostPort, parseIntFlag, stopOnSignals } from './cli-support';

interface RouterFlags {
  routes?: string;
  redis?: string;
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
}

function routeSource(flags: RouterFlags): RouteSource {
  const redisUrl = flags.redis ?? process.env.SF_REDIS_URL;
  if (flags.routes && flags.redis) throw new UsageError('--routes and --redis are exclusive: a router serves one source');
  if (flags.routes) return new FileRouteSource(flags.routes);
  if (redisUrl) {
    return new RedisRouteSource({
      redisUrl,
      routerGroup: flags.routerGroup,
      routerId: flags.routerId ?? `${hostname()}-${process.pid}`,
      cacheFile: flags.cacheFile,
    });
  }
  throw new UsageError('sf router needs --routes FILE, or --redis URL (or SF_REDIS_URL) for a pushed table');
}

async function runRouter(flags: RouterFlags): Promise<void> {
  // --workers N: this process supervises N workers (router/router-workers.ts), which run the code
  // below with SO_REUSEPORT listeners and admin ports admin, admin+1, ...
  const workers = parseIntFlag(flags.workers, '--workers', 1, 256);
  const worker = routerWorkerIndex();
  if (workers > 1 && worker === undefined) return superviseRouterWorkers(workers, createLogger('router'));
  const admin = parseHostPort(flags.admin, '--admin');
  admin.port = workerAdminPort(admin.port, worker);
  const source = routeSource(flags);
  const router = new Router({
    bindHost: flags.bind,
    maxConnections: parseIntFlag(flags.maxConnections, '--max-connections', 1),
    keepAliveMs: parseIntFlag(flags.keepaliveMs, '--keepalive-ms', 0),
    backlog: parseIntFlag(flags.backlog, '--backlog', 1, 65535),
    onDisconnect: flags.onDisconnect,
    relay: selectRelay(flags.relay),
    reusePort: workers > 1,
  });
  await router.start(source);
  const adminServer = await startAdminServer(router, createRouterMetrics(router), admin.host, admin.port);
  router.logger.info({ admin: `${admin.host}:${adminServer.port}`, relay: router.relay.kind, source: source.description, routes: router.currentTable().routes.length }, 'router started');

  process.on('SIGHUP', () => {
    router.logger.info('SIGHUP: reloading routes');
    void router.reload();
  });
  stopOnSignals(router.logger, 'router', () => {
    adminServer.close();
    return router.close();
  });
}

export function registerRouterCommand(program: Command): void {
  program
    .command('router')
    .description('run an L4 TCP router from a route file or a router group pushed by control')
    .option('--routes <file>', 'static JSON route file; reloaded on SIGHUP and when it changes')
    .option('--redis <url>', 'Redis URL of the control plane (default: SF_REDIS_URL)')
    .option('--router-group <name>', 'router group whose table to serve', DEFAULT_ROUTER_GROUP)
    .option('--router-id <id>', 'id reported in heartbeats (default: HOST-PID)')
    .option('--cache-file <file>', 'where the last table is kept for restarts while Redis is down')
    .option('--admin <host:port>', 'admin endpoint (/health, /routes, /metrics)', '127.0.0.1:7601')
    .option('--bind <host>', 'address the route ports listen on', DEFAULT_ROUTER_OPTIONS.bindHost)
    .option('--max-connections <n>', 'client connections across all routes', String(DEFAULT_ROUTER_OPTIONS.maxConnections))
    .option('--keepalive-ms <ms>', 'TCP keepalive delay on both sides, 0 disables', String(DEFAULT_ROUTER_OPTIONS.keepAliveMs))
    .option('--backlog <n>', 'listen backlog per route port', String(DEFAULT_ROUTER_OPTIONS.backlog))
    .addOption(new Option('--on-disconnect <policy>', 'when the route source is lost').choices(['keep-last', 'fail-closed']).default('keep-last'))
    .option('--workers <n>', 'router processes sharing each port with SO_REUSEPORT (needs the native addon)', '1')
    .addOption(new Option('--relay <kind>', 'byte mover: native splice relay or pure JS').choices(['auto', 'js', 'native']).default('auto'))
    .action(async (flags: RouterFlags) => {
      try {
        await runRouter(flags);
      } catch (err) {
        exitWithError(err);
      }
    });
}
