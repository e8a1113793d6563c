/**
 * Volumes under `/v3/volumes`: each instance's data directory on its cell as a record of its
 * own (docs/volumes.md), built from what the cells report. Control keeps no copy: a volume is
 * whatever a cell says it holds, so a restarted control shows the same list.
 */
import { ErrorCode, SfError } from '../../common';
import type { ActualInstance } from '../../protocol';
import type { CellDirectory, CellSnapshot } from '../services/cell-directory';
import type { ServiceStore } from '../services/service-store';
import type { ServiceRecord } from '../services/service-types';
import type { HttpServer } from './http-server';

/**
 * - `attached`: its instance runs or starts on it;
 * - `detached`: on disk, its instance not running (stopped, failed, fenced);
 * - `full`: usage reached `size_mb`, the engine refuses writes;
 * - `orphaned`: no service record names it (kept until deleted on purpose);
 * - `unknown`: its cell is not alive, the last report is shown.
 */
export type VolumeState = 'attached' | 'detached' | 'full' | 'orphaned' | 'unknown';

export interface VolumeView {
  id: string;
  service: string;
  instance: string;
  cell: string;
  size_mb: number;
  /** Measured by the cell every `--volume-check-ms`; null before the first measurement. */
  used_mb: number | null;
  path: string | null;
  state: VolumeState;
}

export interface VolumesApiDeps {
  directory: CellDirectory;
  store: ServiceStore;
}

function volumeState(cell: CellSnapshot, a: ActualInstance, owned: boolean): VolumeState {
  if (!cell.alive) return 'unknown';
  if (!owned) return 'orphaned';
  if (a.volumeFull) return 'full';
  return a.state === 'running' || a.state === 'starting' ? 'attached' : 'detached';
}

/** Every volume the cells report, sorted by service then instance. */
export function volumeViews(cells: ReadonlyMap<string, CellSnapshot>, services: ServiceRecord[]): VolumeView[] {
  const owners = new Set(services.flatMap((s) => s.instances.map((i) => `${i.cell}/${i.id}`)));
  const out: VolumeView[] = [];
  for (const cell of cells.values()) {
    for (const a of cell.actual.values()) {
      if (!a.volumePresent) continue;
      out.push({
        // A volume is named by where it is: the same instance id may have a kept copy elsewhere.
        id: `${cell.name}/${a.instanceId}`,
        service: a.service,
        instance: a.instanceId,
        cell: cell.name,
        size_mb: a.volumeSizeMb,
        used_mb: a.volumeUsedMb ?? null,
        path: a.volumePath ?? null,
        state: volumeState(cell, a, owners.has(`${cell.name}/${a.instanceId}`)),
      });
    }
  }
  return out.sort((x, y) => x.service.localeCompare(y.service) || x.id.localeCompare(y.id));
}

export function registerVolumesApi(server: HttpServer, { directory, store }: VolumesApiDeps): void {
  const list = async (): Promise<VolumeView[]> => {
    const [cells, services] = await Promise.all([directory.snapshot(), store.list()]);
    return volumeViews(cells, services);
  };

  server.route('get', '/v3/volumes', 'read', async (ctx) => {
    const service = ctx.query.get('service');
    const all = await list();
    return { body: { resources: service ? all.filter((v) => v.service === service) : all } };
  });

  server.route('get', '/v3/volumes/:cell/:instance', 'read', async (ctx) => {
    const id = `${ctx.params.cell}/${ctx.params.instance}`;
    const volume = (await list()).find((v) => v.id === id);
    if (!volume) throw new SfError(ErrorCode.NotFound, `no volume '${id}'`, 'id');
    return { body: volume };
  });
}
