/**
 * `sf snapshot`, `sf snapshots`, `sf restore`, `sf delete-snapshot` (docs/volumes.md,
 * Snapshots): clients of `/v3/snapshots` and `.../actions/snapshot`. Long work shows progress on
 * stderr (a spinner on a terminal, plain lines otherwise); stdout keeps the result.
 */
import type { Command } from 'commander';
import type { ServiceView } from '../control/services/service-types';
import type { SnapshotView } from '../control/services/snapshot-records';
import { ApiClient } from './api-client';
import { exitWithError, parseIntFlag } from './cli-support';
import { DEFAULT_WAIT_TIMEOUT_S, waitForService } from './command-services';
import { formatTable, printResult } from './output-table';
import { startProgress, type Progress } from './progress';

const SILENT: Progress = { update: () => undefined, stop: () => undefined };

function megabytes(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}

function snapshotsTable(list: SnapshotView[]): string {
  if (!list.length) return 'no snapshots\n';
  return formatTable(
    ['SNAPSHOT', 'SERVICE', 'ENGINE', 'MB', 'CELLS', 'CREATED'],
    list.map((s) => [s.id, s.service, s.engine, megabytes(s.bytes), s.cells.join(','), s.created_at]),
  );
}

async function takeSnapshot(name: string, flags: { keep?: string; json?: boolean }): Promise<void> {
  const body = flags.keep !== undefined ? { keep: parseIntFlag(flags.keep, '--keep', 1, 1000) } : {};
  const client = await ApiClient.fromEnv();
  const progress = flags.json ? SILENT : startProgress(`snapshot of ${name}`);
  progress.update('taking it on the primary and copying it to a second cell');
  let view: SnapshotView;
  try {
    view = await client.request<SnapshotView>(
      'POST',
      `/v3/service_instances/${encodeURIComponent(name)}/actions/snapshot`,
      body,
    );
  } finally {
    progress.stop();
  }
  printResult(
    flags.json,
    view,
    () =>
      `snapshot ${view.id}: ${megabytes(view.bytes)} MB on ${view.cells.join(', ')}\nrestore it with: sf restore ${view.id} NEW-NAME --wait\n`,
  );
}

async function listSnapshots(name: string | undefined, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const query = name ? `?service=${encodeURIComponent(name)}` : '';
  const { resources } = await client.request<{ resources: SnapshotView[] }>('GET', `/v3/snapshots${query}`);
  printResult(flags.json, resources, () => snapshotsTable(resources));
}

interface RestoreFlags {
  replicas?: string;
  sizeMb?: string;
  wait?: boolean;
  timeout: string;
  json?: boolean;
}

async function restoreSnapshot(id: string, name: string, flags: RestoreFlags): Promise<void> {
  const body = {
    name,
    ...(flags.replicas !== undefined ? { replicas: parseIntFlag(flags.replicas, '--replicas', 0, 8) } : {}),
    ...(flags.sizeMb !== undefined ? { volume: { size_mb: parseIntFlag(flags.sizeMb, '--size-mb', 1) } } : {}),
  };
  const timeoutMs = parseIntFlag(flags.timeout, '--timeout', 1) * 1000;
  const client = await ApiClient.fromEnv();
  const started = Date.now();
  let view = await client.request<ServiceView>('POST', `/v3/snapshots/${encodeURIComponent(id)}/actions/restore`, body);
  if (flags.wait) {
    const progress = flags.json ? SILENT : startProgress(`restore into ${name}`);
    try {
      view = await waitForService(client, name, timeoutMs, (v) => {
        const up = v.instances.filter((i) => i.state === 'running').length;
        progress.update(`${v.status}, ${up}/${v.instances.length || v.replicas + 1} instances running`);
      });
    } finally {
      progress.stop();
    }
  }
  printResult(
    flags.json,
    view,
    () =>
      `service ${name} ${flags.wait ? `running after ${((Date.now() - started) / 1000).toFixed(1)} s` : 'created'} from snapshot ${id}: router port ${view.port}\n`,
  );
}

async function deleteSnapshot(id: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const view = await client.request<SnapshotView>('DELETE', `/v3/snapshots/${encodeURIComponent(id)}`);
  printResult(flags.json, view, () => `snapshot ${id} deleted from ${view.cells.join(', ')}\n`);
}

export function registerSnapshotCommands(program: Command): void {
  program
    .command('snapshot <name>')
    .description("take a consistent snapshot of a service's primary (Redis BGSAVE, PostgreSQL pg_basebackup)")
    .option('--keep <n>', "keep only the newest N snapshots of the service (default: the service's snapshot_keep, 7)")
    .option('--json', 'machine-readable output')
    .action((name: string, flags: { keep?: string; json?: boolean }) => takeSnapshot(name, flags).catch(exitWithError));
  program
    .command('snapshots [name]')
    .description('list snapshots, newest first (of one service when NAME is given)')
    .option('--json', 'machine-readable output')
    .action((name: string | undefined, flags: { json?: boolean }) => listSnapshots(name, flags).catch(exitWithError));
  program
    .command('restore <snapshot> <new-name>')
    .description("create a new service holding exactly the snapshot's data")
    .option('--replicas <n>', "replicas (default: the snapshot's service's)")
    .option('--size-mb <mb>', "volume size (default: the snapshot's service's)")
    .option('--wait', 'wait until every instance runs and the routers serve its route')
    .option('--timeout <seconds>', 'how long --wait waits', String(DEFAULT_WAIT_TIMEOUT_S))
    .option('--json', 'machine-readable output')
    .action((id: string, name: string, flags: RestoreFlags) => restoreSnapshot(id, name, flags).catch(exitWithError));
  program
    .command('delete-snapshot <snapshot>')
    .description('delete a snapshot from every cell holding it')
    .option('--json', 'machine-readable output')
    .action((id: string, flags: { json?: boolean }) => deleteSnapshot(id, flags).catch(exitWithError));
}
