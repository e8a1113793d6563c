/** `sf cells`: registered cells, liveness, capacity and instances, from `/v3/cells`. */
import type { Command } from 'commander';
import type { CellView } from '../control/api/routes-cells';
import { ApiClient } from './api-client';
import { exitWithError } from './cli-support';
import { formatTable, printResult } from './output-table';

async function listCells(flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const { resources } = await client.request<{ resources: CellView[] }>('GET', '/v3/cells');
  printResult(flags.json, resources, () =>
    resources.length
      ? formatTable(
          ['NAME', 'ZONE', 'ALIVE', 'HOST', 'USED/CAPACITY MB', 'EXECUTORS', 'ENGINES', 'SIDECARS', 'INSTANCES'],
          resources.map((c) => [
            c.name,
            c.zone,
            c.alive ? 'yes' : 'NO',
            c.host,
            c.capacity_mb === null ? null : `${c.used_mb}/${c.capacity_mb}`,
            c.executors.join(','),
            c.engines.join(','),
            c.sidecars.join(',') || null,
            c.instances.map((i) => `${i.id}(${i.role[0]},${i.state})`).join(' '),
          ]),
        )
      : 'no cells registered\n',
  );
}

export function registerCellsCommand(program: Command): void {
  program
    .command('cells')
    .description('list cells: zone, liveness, capacity, executors, engines, sidecars and the instances they run')
    .option('--json', 'machine-readable output')
    .action((flags: { json?: boolean }) => listCells(flags).catch(exitWithError));
}
