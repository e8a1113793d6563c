/** `sf volumes`: every volume the cells report, its size, measured usage and state (`/v3/volumes`). */
import type { Command } from 'commander';
import type { VolumeView } from '../control/api/routes-volumes';
import { ApiClient } from './api-client';
import { exitWithError } from './cli-support';
import { formatTable, printResult } from './output-table';

async function listVolumes(flags: { json?: boolean; service?: string }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const query = flags.service ? `?service=${encodeURIComponent(flags.service)}` : '';
  const { resources } = await client.request<{ resources: VolumeView[] }>('GET', `/v3/volumes${query}`);
  printResult(flags.json, resources, () =>
    resources.length
      ? formatTable(
          ['VOLUME', 'SERVICE', 'CELL', 'USED/SIZE MB', 'STATE', 'PATH'],
          resources.map((v) => [v.id, v.service, v.cell, `${v.used_mb ?? '?'}/${v.size_mb}`, v.state, v.path]),
        )
      : 'no volumes\n',
  );
}

export function registerVolumesCommand(program: Command): void {
  program
    .command('volumes')
    .description('list volumes: service, cell, measured usage against size, state')
    .option('--service <name>', 'only this service')
    .option('--json', 'machine-readable output')
    .action((flags: { json?: boolean; service?: string }) => listVolumes(flags).catch(exitWithError));
}
