/**
 * `sf create-service`, `sf services`, `sf service NAME`, `sf delete-service NAME`: clients of
 * `/v3/service_instances`. `--wait` polls until the service runs (or fails to place).
 */
import { type Command, Option } from 'commander';
import { ErrorCode, SfError } from '../common/errors';
import type { InstanceView, ServiceCreateInput, ServiceView } from '../control/services';
import { SERVICE_TLS_POLICIES, type ServiceTlsPolicy } from '../control/services/service-schema';
import { DISK_SYNC_MODES, SIDECAR_ENGINES, SIDECAR_KINDS, type DiskSync, type SidecarKind } from '../protocol';
import { ApiClient } from './api-client';
import { UsageError, exitWithError, parseIntFlag } from './cli-support';
import { formatTable, printResult } from './output-table';
import { startProgress } from './progress';

interface CreateFlags {
  replicas: string;
  durability: 'sync' | 'async';
  diskSync?: DiskSync;
  sizeMb: string;
  fencing: 'auto' | 'manual';
  routerGroup: string;
  command?: string;
  executor?: string;
  tls?: ServiceTlsPolicy;
  sidecar: string[];
  memoryMb?: string;
  cpus?: string;
  wait?: boolean;
  timeout: string;
  json?: boolean;
}

/** @default 120 s: a postgres service with replicas runs initdb and pg_basebackup */
export const DEFAULT_WAIT_TIMEOUT_S = 120;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function servicesTable(services: ServiceView[]): string {
  return formatTable(
    ['NAME', 'ENGINE', 'PORT', 'REPLICAS', 'DURABILITY', 'STATUS', 'PRIMARY'],
    services.map((s) => {
      const p = s.instances.find((i) => i.role === 'primary');
      return [s.name, s.engine, s.port, s.replicas, s.durability, s.status, p ? `${p.id}@${p.cell}` : null];
    }),
  );
}

/** `redis-exporter:20004`, one per sidecar; `-` for a port not reported yet. */
function sidecarPorts(sidecars: InstanceView['sidecars']): string | null {
  return sidecars?.length ? sidecars.map((c) => `${c.name}:${c.port ?? '-'}`).join(' ') : null;
}

function serviceDetail(s: ServiceView): string {
  const head =
    `name:        ${s.name}\n` +
    `engine:      ${s.engine}${s.executor ? ` (${s.executor})` : ''}\n` +
    `status:      ${s.status}${s.message ? ` (${s.message})` : ''}\n` +
    `router port: ${s.port} (group ${s.router_group}), tls ${s.tls}\n` +
    `replicas:    ${s.replicas}, durability ${s.durability}, disk sync ${s.disk_sync}, volume ${s.volume.size_mb} MB, fencing ${s.fencing.policy}\n` +
    (s.sidecars?.length ? `sidecars:    ${s.sidecars.join(', ')}\n` : '') +
    (s.resources
      ? `limits:      ${[s.resources.memory_mb ? `memory ${s.resources.memory_mb} MB` : '', s.resources.cpus ? `${s.resources.cpus} CPUs` : ''].filter(Boolean).join(', ')}\n`
      : '') +
    '\n';
  const rows = s.instances.map((i) => [
    i.id,
    i.role,
    i.state,
    i.epoch,
    i.cell,
    i.zone,
    i.host && i.port ? `${i.host}:${i.port}` : null,
    ...(s.sidecars?.length ? [sidecarPorts(i.sidecars)] : []),
    i.last_error?.message,
  ]);
  const sidecarColumn = s.sidecars?.length ? ['SIDECARS'] : [];
  return (
    head +
    formatTable(['INSTANCE', 'ROLE', 'STATE', 'EPOCH', 'CELL', 'ZONE', 'ADDRESS', ...sidecarColumn, 'ERROR'], rows)
  );
}

interface RouteServing {
  applied: boolean;
  listen_failures?: Array<{ router: string; reason: string }>;
}

function routeServing(client: ApiClient, name: string): Promise<RouteServing> {
  return client.request<RouteServing>('GET', `/v3/service_instances/${encodeURIComponent(name)}/route`);
}

/**
 * Polls until every instance runs and every live router serves the service's route; fails fast
 * when the leader finds the service unplaceable.
 */
export async function waitForService(
  client: ApiClient,
  name: string,
  timeoutMs: number,
  onView?: (view: ServiceView) => void,
): Promise<ServiceView> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const view = await client.request<ServiceView>('GET', `/v3/service_instances/${encodeURIComponent(name)}`);
    onView?.(view);
    // Running is not enough: a client must find the route served, with the service's TLS, by
    // every live router (a router reports a table version once its ports listen).
    const route = view.status === 'running' ? await routeServing(client, name) : undefined;
    if (route?.applied) return view;
    if (view.status === 'unplaceable')
      throw new SfError(ErrorCode.PlacementUnsatisfiable, view.message ?? `service ${name} cannot be placed`);
    const failed = view.instances.find((i) => i.state === 'failed');
    if (failed)
      throw new SfError(
        ErrorCode.InstanceFailed,
        `instance ${failed.id} on ${failed.cell} failed: ${failed.last_error?.message ?? 'unknown error'}`,
      );
    if (Date.now() > deadline) {
      const cannotListen = route?.listen_failures?.[0];
      throw new SfError(
        ErrorCode.Timeout,
        cannotListen
          ? `service ${name} runs but router ${cannotListen.router} cannot open its port: ${cannotListen.reason}`
          : view.status === 'running'
            ? `service ${name} runs but the routers do not serve its route yet after ${timeoutMs / 1000} s (see 'sf routes')`
            : `service ${name} is still ${view.status} after ${timeoutMs / 1000} s (see 'sf service ${name}')`,
      );
    }
    await sleep(200);
  }
}

function cpusFlag(value: string): number {
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !(n > 0) || n > 1024)
    throw new UsageError(`--cpus must be a positive number up to 1024, got '${value}'`);
  return n;
}

/** `--sidecar` values, checked here so a typo is a usage error before anything is sent. */
function sidecarsFlag(values: string[], engine: string): SidecarKind[] {
  for (const v of values) {
    if (!SIDECAR_KINDS.includes(v as SidecarKind))
      throw new UsageError(`--sidecar must be one of ${SIDECAR_KINDS.join(', ')}, got '${v}'`);
    if (SIDECAR_ENGINES[v as SidecarKind] !== engine)
      throw new UsageError(`--sidecar ${v} serves engine ${SIDECAR_ENGINES[v as SidecarKind]}, not ${engine}`);
  }
  return [...new Set(values)] as SidecarKind[];
}

async function createService(engine: string, name: string, flags: CreateFlags): Promise<void> {
  const body: ServiceCreateInput = {
    name,
    engine: engine as ServiceCreateInput['engine'],
    replicas: parseIntFlag(flags.replicas, '--replicas', 0, 8),
    durability: flags.durability,
    ...(flags.diskSync ? { disk_sync: flags.diskSync } : {}),
    volume: { size_mb: parseIntFlag(flags.sizeMb, '--size-mb', 1) },
    fencing: { policy: flags.fencing },
    router_group: flags.routerGroup,
    ...(flags.executor ? { executor: flags.executor as ServiceCreateInput['executor'] } : {}),
    ...(flags.tls ? { tls: flags.tls } : {}),
    ...(flags.sidecar.length ? { sidecars: sidecarsFlag(flags.sidecar, engine) } : {}),
    ...(flags.memoryMb || flags.cpus
      ? {
          resources: {
            ...(flags.memoryMb ? { memory_mb: parseIntFlag(flags.memoryMb, '--memory-mb', 16) } : {}),
            ...(flags.cpus ? { cpus: cpusFlag(flags.cpus) } : {}),
          },
        }
      : {}),
  };
  if (engine === 'tcp' && !flags.command)
    throw new UsageError("engine tcp needs --command 'PROGRAM ARGS...' (placeholders {port}, {host}, {dataDir})");
  if (flags.command) {
    const [file, ...args] = flags.command.split(/\s+/).filter(Boolean);
    if (!file) throw new UsageError('--command must name a program');
    body.command = { file, args };
  }
  const client = await ApiClient.fromEnv();
  const started = Date.now();
  let view = await client.request<ServiceView>('POST', '/v3/service_instances', body);
  if (flags.wait) {
    // --json is for machines: only the result, no progress lines.
    const progress = flags.json ? { update: () => undefined, stop: () => undefined } : startProgress(`service ${name}`);
    try {
      view = await waitForService(client, name, parseIntFlag(flags.timeout, '--timeout', 1) * 1000, (v) => {
        const up = v.instances.filter((i) => i.state === 'running').length;
        progress.update(`${v.status}, ${up}/${v.instances.length || v.replicas + 1} instances running`);
      });
    } finally {
      progress.stop();
    }
  }
  printResult(flags.json, view, () => {
    const lines = [
      `service ${name} ${flags.wait ? `running after ${((Date.now() - started) / 1000).toFixed(1)} s` : 'created'}: router port ${view.port}`,
    ];
    if (!flags.wait) lines.push(`watch it start with: sf service ${name}`);
    // Nothing answers without credentials: a service key is how a client gets some.
    if (engine !== 'tcp') lines.push(`credentials: sf create-service-key ${name} KEY, then sf service-key ${name} KEY`);
    return lines.join('\n') + '\n';
  });
}

/** Every service, in pages of 1,000 (a few hundred KB each), following `next` to the last one. */
export async function allServices(client: ApiClient): Promise<ServiceView[]> {
  const resources: ServiceView[] = [];
  let path: string | null = '/v3/service_instances?page=1&per_page=1000';
  while (path) {
    const page: { resources: ServiceView[]; pagination?: { next: { href: string } | null } } = await client.request(
      'GET',
      path,
    );
    resources.push(...page.resources);
    path = page.pagination?.next?.href ?? null;
  }
  return resources;
}

async function listServices(flags: { json?: boolean }): Promise<void> {
  const resources = await allServices(await ApiClient.fromEnv());
  printResult(flags.json, resources, () => (resources.length ? servicesTable(resources) : 'no services\n'));
}

async function showService(name: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const view = await client.request<ServiceView>('GET', `/v3/service_instances/${encodeURIComponent(name)}`);
  printResult(flags.json, view, () => serviceDetail(view));
}

async function updateService(
  name: string,
  flags: { diskSync?: DiskSync; snapshotKeep?: string; tls?: ServiceTlsPolicy; json?: boolean },
): Promise<void> {
  if (!flags.diskSync && flags.snapshotKeep === undefined && !flags.tls)
    throw new UsageError('nothing to change: give --disk-sync, --snapshot-keep or --tls');
  const keep =
    flags.snapshotKeep !== undefined ? parseIntFlag(flags.snapshotKeep, '--snapshot-keep', 1, 1000) : undefined;
  const client = await ApiClient.fromEnv();
  const view = await client.request<ServiceView>('PATCH', `/v3/service_instances/${encodeURIComponent(name)}`, {
    ...(flags.diskSync ? { disk_sync: flags.diskSync } : {}),
    ...(keep !== undefined ? { snapshot_keep: keep } : {}),
    ...(flags.tls ? { tls: flags.tls } : {}),
  });
  printResult(
    flags.json,
    view,
    () => `service ${name}: disk sync ${view.disk_sync}, snapshots kept ${view.snapshot_keep}, tls ${view.tls}\n`,
  );
}

async function deleteService(name: string, flags: { json?: boolean; wait: boolean; timeout: string }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const view = await client.request<ServiceView>('DELETE', `/v3/service_instances/${encodeURIComponent(name)}`);
  if (flags.wait) {
    const deadline = Date.now() + parseIntFlag(flags.timeout, '--timeout', 1) * 1000;
    for (;;) {
      try {
        await client.request('GET', `/v3/service_instances/${encodeURIComponent(name)}`);
      } catch (err) {
        if (err instanceof SfError && err.code === ErrorCode.NotFound) break;
        throw err;
      }
      if (Date.now() > deadline) throw new SfError(ErrorCode.Timeout, `service ${name} is still being deleted`);
      await sleep(200);
    }
  }
  printResult(
    flags.json,
    { deleted: name, port: view.port },
    () => `service ${name} deleted; port ${view.port} is free\n`,
  );
}

const run =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A) =>
    fn(...args).catch(exitWithError);

function diskSyncOption(): Option {
  return new Option(
    '--disk-sync <mode>',
    'always: fsync every write; interval: about once a second; off: the OS decides (default: always with sync durability, else interval)',
  ).choices(DISK_SYNC_MODES);
}

export function registerServiceCommands(program: Command): void {
  program
    .command('create-service')
    .description('create a service: one primary and N replicas on different cells, behind a router port')
    .argument('<engine>', 'redis | postgres | tcp')
    .argument('<name>', 'service name (lowercase letters, digits, -)')
    .option('--replicas <n>', 'replicas besides the primary', '1')
    .addOption(
      new Option('--durability <mode>', 'sync: acknowledged writes survive a failover; async: faster')
        .choices(['sync', 'async'])
        .default('async'),
    )
    .addOption(diskSyncOption())
    .option('--size-mb <n>', 'volume size per instance, in MB', '256')
    .addOption(new Option('--fencing <policy>', 'failover policy').choices(['auto', 'manual']).default('auto'))
    .option('--router-group <name>', 'router group whose port the service gets', 'default')
    .addOption(
      new Option('--executor <kind>', "run instances as processes or containers (default: each cell's)").choices([
        'process',
        'docker',
      ]),
    )
    .addOption(
      new Option(
        '--tls <policy>',
        "required: clients must use TLS (certificate from the platform CA); optional: TLS or plaintext; off: plaintext (default: control's, required under sf up)",
      ).choices(SERVICE_TLS_POLICIES),
    )
    .option(
      '--sidecar <name>',
      `a sidecar beside each instance, sharing its network and volume (repeatable): ${SIDECAR_KINDS.join(', ')}`,
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .option('--memory-mb <n>', 'memory limit per instance, in MB (a container limit with the docker executor)')
    .option('--cpus <n>', 'CPU limit per instance, e.g. 0.5 (a container limit with the docker executor)')
    .option('--command <cmdline>', 'engine tcp: the command, with {port}, {host} and {dataDir} placeholders')
    .option('--wait', 'wait until every instance runs and the routers serve its route')
    .option('--timeout <seconds>', 'how long --wait waits', String(DEFAULT_WAIT_TIMEOUT_S))
    .option('--json', 'machine-readable output')
    .action(run(createService));

  program
    .command('services')
    .description('list services')
    .option('--json', 'machine-readable output')
    .action(run(listServices));

  program
    .command('service')
    .description('show a service: router port, instances, roles, states, epochs')
    .argument('<name>', 'service name')
    .option('--json', 'machine-readable output')
    .action(run(showService));

  program
    .command('update-service')
    .description('change a running service without a restart (its disk sync, snapshot retention, TLS policy)')
    .argument('<name>', 'service name')
    .addOption(diskSyncOption())
    .option('--snapshot-keep <n>', 'snapshots kept when sf snapshot gives no --keep (default 7)')
    .addOption(
      new Option(
        '--tls <policy>',
        'the TLS policy: the route follows at once; redis can change only between required and optional (docs/tls.md)',
      ).choices(SERVICE_TLS_POLICIES),
    )
    .option('--json', 'machine-readable output')
    .action(run(updateService));

  program
    .command('delete-service')
    .description('delete a service: stops its instances, removes its route and frees its port')
    .argument('<name>', 'service name')
    .option('--no-wait', 'return once deletion is requested')
    .option('--timeout <seconds>', 'how long to wait for the deletion', '60')
    .option('--json', 'machine-readable output')
    .action(run(deleteService));
}
