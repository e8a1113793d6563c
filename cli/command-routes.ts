/**
 * `sf routes`, `sf create-route`, `sf delete-route` and `sf router-groups`: clients of the
 * routing API. Router groups are named on the command line and resolved to guids here.
 */
import { type Command, Option } from 'commander';
import { ErrorCode, SfError } from '../common/errors';
import type { RouterGroup } from '../control/state/router-group-store';
import type { TcpRouteInput, TcpRouteKeyInput, TcpRouteMapping } from '../control/state/tcp-route-types';
import { ApiClient } from './api-client';
import { exitWithError, parseHostPort, parseIntFlag } from './cli-support';
import { formatTable, printResult } from './output-table';

interface CommonFlags {
  routerGroup: string;
  json?: boolean;
}

interface CreateFlags extends CommonFlags {
  port: string;
  backend: string[];
  backendId?: string;
  ttl?: string;
  mode?: TcpRouteInput['mode'];
  role?: TcpRouteInput['role'];
  weight?: string;
  epoch?: string;
  state?: TcpRouteInput['state'];
  sni?: string;
  proxyProtocol?: string;
  tls?: boolean;
  maxConnections?: string;
  connectTimeoutMs?: string;
  idleTimeoutMs?: string;
  drainTimeoutMs?: string;
}

interface DeleteFlags extends CommonFlags {
  port: string;
  backend?: string[];
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

async function groupByName(client: ApiClient, name: string): Promise<RouterGroup> {
  const groups = await client.request<RouterGroup[]>(
    'GET',
    `/routing/v1/router_groups?name=${encodeURIComponent(name)}`,
  );
  const group = groups.find((g) => g.name === name);
  if (!group) throw new SfError(ErrorCode.NotFound, `no router group named '${name}'`, 'router-group');
  return group;
}

function routesTable(routes: TcpRouteMapping[], groups: Map<string, string>): string {
  return formatTable(
    ['PORT', 'GROUP', 'MODE', 'BACKEND', 'ID', 'ROLE', 'WEIGHT', 'EPOCH', 'STATE', 'TTL', 'EXPIRES'],
    routes.map((r) => [
      r.port,
      groups.get(r.router_group_guid) ?? r.router_group_guid,
      r.mode,
      `${r.backend_ip}:${r.backend_port}`,
      r.backend_id === `${r.backend_ip}:${r.backend_port}` ? '' : r.backend_id,
      r.role,
      r.weight,
      r.epoch,
      r.state,
      r.ttl,
      r.expires_at,
    ]),
  );
}

async function listRoutes(flags: Partial<CommonFlags>): Promise<void> {
  const client = await ApiClient.fromEnv();
  const groups = await client.request<RouterGroup[]>('GET', '/routing/v1/router_groups');
  const names = new Map(groups.map((g) => [g.guid, g.name]));
  let path = '/routing/v1/tcp_routes';
  if (flags.routerGroup) path += `?router_group_guid=${(await groupByName(client, flags.routerGroup)).guid}`;
  const routes = await client.request<TcpRouteMapping[]>('GET', path);
  printResult(flags.json, routes, () => (routes.length ? routesTable(routes, names) : 'no routes\n'));
}

function optionalInt(value: string | undefined, flag: string, min: number, max?: number): number | undefined {
  return value === undefined ? undefined : parseIntFlag(value, flag, min, max);
}

function createBody(flags: CreateFlags, group: RouterGroup): TcpRouteInput[] {
  const port = parseIntFlag(flags.port, '--port', 1, 65535);
  const fields: Omit<TcpRouteInput, 'router_group_guid' | 'port' | 'backend_ip' | 'backend_port'> = {
    backend_id: flags.backendId,
    ttl: optionalInt(flags.ttl, '--ttl', 1),
    // Without --ttl the route stays until deleted (the API's default would expire it).
    ...(flags.ttl === undefined && { permanent: true }),
    mode: flags.mode,
    role: flags.role,
    weight: optionalInt(flags.weight, '--weight', 0, 1000),
    epoch: optionalInt(flags.epoch, '--epoch', 0),
    state: flags.state,
    sni: flags.sni
      ?.split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    proxyProtocol: flags.proxyProtocol === undefined ? undefined : (Number(flags.proxyProtocol) as 1 | 2),
    tls: flags.tls,
    maxConnections: optionalInt(flags.maxConnections, '--max-connections', 1),
    connectTimeoutMs: optionalInt(flags.connectTimeoutMs, '--connect-timeout-ms', 1),
    idleTimeoutMs: optionalInt(flags.idleTimeoutMs, '--idle-timeout-ms', 0),
    drainTimeoutMs: optionalInt(flags.drainTimeoutMs, '--drain-timeout-ms', 0),
  };
  return flags.backend.map((b) => {
    const { host, port: backendPort } = parseHostPort(b, '--backend');
    return { router_group_guid: group.guid, port, backend_ip: host, backend_port: backendPort, ...fields };
  });
}

async function createRoute(flags: CreateFlags): Promise<void> {
  const client = await ApiClient.fromEnv();
  const group = await groupByName(client, flags.routerGroup);
  const created = await client.request<TcpRouteMapping[]>(
    'POST',
    '/routing/v1/tcp_routes/create',
    createBody(flags, group),
    // Without it control answers as Cloud Foundry does: 201 and no body.
    { prefer: 'return=representation' },
  );
  printResult(flags.json, created, () => routesTable(created, new Map([[group.guid, group.name]])));
}

async function deleteRoute(flags: DeleteFlags): Promise<void> {
  const client = await ApiClient.fromEnv();
  const group = await groupByName(client, flags.routerGroup);
  const port = parseIntFlag(flags.port, '--port', 1, 65535);
  let keys: TcpRouteKeyInput[];
  if (flags.backend?.length) {
    keys = flags.backend.map((b) => {
      const { host, port: backendPort } = parseHostPort(b, '--backend');
      return { router_group_guid: group.guid, port, backend_ip: host, backend_port: backendPort };
    });
  } else {
    // Without --backend the whole route goes: every backend registered on the port.
    const all = await client.request<TcpRouteMapping[]>(
      'GET',
      `/routing/v1/tcp_routes?router_group_guid=${group.guid}`,
    );
    keys = all
      .filter((r) => r.port === port)
      .map((r) => ({
        router_group_guid: group.guid,
        port,
        backend_ip: r.backend_ip,
        backend_port: r.backend_port,
        backend_id: r.backend_id,
      }));
    if (keys.length === 0) throw new SfError(ErrorCode.NotFound, `no route on port ${port} in '${group.name}'`, 'port');
  }
  await client.request('POST', '/routing/v1/tcp_routes/delete', keys);
  printResult(flags.json, { deleted: keys.length }, () => `deleted ${keys.length} backend(s) from port ${port}\n`);
}

async function listRouterGroups(flags: Pick<CommonFlags, 'json'>): Promise<void> {
  const client = await ApiClient.fromEnv();
  const groups = await client.request<RouterGroup[]>('GET', '/routing/v1/router_groups');
  printResult(flags.json, groups, () =>
    formatTable(
      ['NAME', 'TYPE', 'RESERVABLE PORTS', 'GUID'],
      groups.map((g) => [g.name, g.type, g.reservable_ports, g.guid]),
    ),
  );
}

const run =
  <T>(fn: (flags: T) => Promise<void>) =>
  (flags: T) =>
    fn(flags).catch(exitWithError);

export function registerRouteCommands(program: Command): void {
  program
    .command('routes')
    .description('list TCP routes (one line per backend)')
    .option('--router-group <name>', 'only this router group')
    .option('--json', 'machine-readable output')
    .action(run(listRoutes));

  program
    .command('create-route')
    .description('create or refresh a TCP route: a router port and one or more backends')
    .requiredOption('--port <port>', 'router port (within the group reservable_ports)')
    .requiredOption('--backend <host:port>', 'backend address; repeat for several', collect)
    .option('--router-group <name>', 'router group', 'default')
    .option('--backend-id <id>', 'backend id (default HOST:PORT)')
    .option('--ttl <seconds>', 'expire unless re-registered within this time (default: never)')
    .addOption(new Option('--mode <mode>', 'balancing mode').choices(['primary', 'round-robin', 'least-conn']))
    .addOption(new Option('--role <role>', 'backend role').choices(['primary', 'replica']))
    .option('--weight <n>', 'backend weight 0-1000')
    .option('--epoch <n>', 'backend fencing epoch')
    .addOption(new Option('--state <state>', 'backend state').choices(['active', 'draining', 'fenced']))
    .option('--sni <names>', 'comma-separated SNI host names for a shared TLS port')
    .addOption(new Option('--proxy-protocol <version>', 'send a PROXY header').choices(['1', '2']))
    .option('--tls', 'TLS towards the backend')
    .option('--max-connections <n>', 'client connections on this route')
    .option('--connect-timeout-ms <ms>', 'backend connect timeout')
    .option('--idle-timeout-ms <ms>', 'idle timeout (0 disables)')
    .option('--drain-timeout-ms <ms>', 'how long removed backends keep their connections')
    .option('--json', 'machine-readable output')
    .action(run(createRoute));

  program
    .command('delete-route')
    .description('delete a TCP route, or some of its backends')
    .requiredOption('--port <port>', 'router port')
    .option('--backend <host:port>', 'only this backend; repeat for several (default: all)', collect)
    .option('--router-group <name>', 'router group', 'default')
    .option('--json', 'machine-readable output')
    .action(run(deleteRoute));

  program
    .command('router-groups')
    .description('list router groups and their reservable ports')
    .option('--json', 'machine-readable output')
    .action(run(listRouterGroups));
}
