/**
 * `sf router`: runs a router from a static route file (standalone, no Redis or control) or
 * from a router group's table pushed through Redis. The body lives in router-main.ts.
 */
import { type Command, Option } from 'commander';
import { DEFAULT_ROUTER_OPTIONS } from '../router/router-options';
import { DEFAULT_ROUTER_GROUP } from '../protocol/route-defaults';
import { exitWithError } from './cli-support';
import { withRedisCredentialsOption } from './redis-credentials-option';
import type { RouterFlags } from './router-main';

export function registerRouterCommand(program: Command): void {
  withRedisCredentialsOption(program.command('router'))
    .description('run an L4 TCP router from a route file or a router group pushed by control')
    .option('--routes <file>', 'static JSON route file; reloaded on SIGHUP and when it changes')
    .option(
      '--control <url>',
      'control API to ask for the Redis that carries the pushed table (token: SF_API_TOKEN or the local admin token)',
    )
    .option('--redis <url>', 'Redis URL of the control plane (default: SF_REDIS_URL)')
    .option(
      '--key-prefix <prefix>',
      'prefix of every Redis key; control, cells and routers of one installation use the same (default: SF_KEY_PREFIX or sf:)',
    )
    .option('--router-group <name>', 'router group whose table to serve', DEFAULT_ROUTER_GROUP)
    .option('--router-id <id>', 'id reported in heartbeats (default: HOST-PID)')
    .option('--cache-file <file>', 'where the last table is kept for restarts while Redis is down')
    .option(
      '--admin <host:port>',
      'admin endpoint (/health; /routes and /metrics need SF_API_TOKEN or the token file named after this address)',
      '127.0.0.1:7601',
    )
    .option('--bind <host>', 'address the route ports listen on', DEFAULT_ROUTER_OPTIONS.bindHost)
    .option(
      '--max-connections <n>',
      'client connections across all routes',
      String(DEFAULT_ROUTER_OPTIONS.maxConnections),
    )
    .option(
      '--keepalive-ms <ms>',
      'TCP keepalive delay on both sides, 0 disables',
      String(DEFAULT_ROUTER_OPTIONS.keepAliveMs),
    )
    .option(
      '--backlog <n>',
      'listen backlog per route port: the most the kernel queues (net.core.somaxconn) unless set lower',
      String(DEFAULT_ROUTER_OPTIONS.backlog),
    )
    .addOption(
      new Option('--on-disconnect <policy>', 'when the route source is lost')
        .choices(['keep-last', 'fail-closed'])
        .default('keep-last'),
    )
    .option(
      '--threads <n>',
      'native relay threads accepting, connecting and relaying in this process (default: number of cores)',
    )
    .option('--workers <n>', 'router processes sharing each port with SO_REUSEPORT (needs the native addon)', '1')
    .addOption(
      new Option('--relay <kind>', 'byte mover: native splice relay or pure JS')
        .choices(['auto', 'js', 'native'])
        .default('auto'),
    )
    .action(async (flags: RouterFlags) => {
      try {
        const { runRouter } = await import('./router-main');
        await runRouter(flags);
      } catch (err) {
        exitWithError(err);
      }
    });
}
