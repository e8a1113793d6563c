/** Cells under `/v3/cells`: registration, liveness, capacity and the instances each reports. */
import { ErrorCode, SfError } from '../../common';
import type { CellDirectory, CellSnapshot } from '../services/cell-directory';
import type { ServiceStore } from '../services/service-store';
import type { HttpServer } from './http-server';

export interface CellView {
  name: string;
  alive: boolean;
  zone: string | null;
  host: string | null;
  capacity_mb: number | null;
  used_mb: number | null;
  /** Measured disk usage of the cell's volumes (docs/volumes.md); null before measured. */
  disk_used_mb: number | null;
  /** Instances whose volume is full: their engines refuse writes. */
  volumes_full: string[];
  engines: string[];
  executors: string[];
  /** Sidecars the cell can run as processes (docker cells run them from the engine's image). */
  sidecars: string[];
  port_range: { from: number; to: number } | null;
  heartbeat_at: string | null;
  /** The cell's Prometheus endpoint, when it serves one. */
  metrics_url: string | null;
  instances: Array<{
    id: string;
    service: string;
    role: string;
    state: string;
    epoch: number;
    port: number | null;
    healthy: boolean | null;
  }>;
}

export interface CellsApiDeps {
  directory: CellDirectory;
  store: ServiceStore;
}

function cellView(cell: CellSnapshot, promisedMb: number): CellView {
  const r = cell.record;
  return {
    name: cell.name,
    alive: cell.alive,
    zone: r?.zone ?? null,
    host: r?.host ?? null,
    capacity_mb: r?.capacityMb ?? null,
    used_mb: r ? Math.max(r.usedMb, promisedMb) : null,
    disk_used_mb: r?.diskUsedMb ?? null,
    volumes_full: r?.volumesFull ?? [],
    engines: r?.engines ?? [],
    executors: r?.executors ?? [],
    sidecars: r?.sidecars ?? [],
    port_range: r?.portRange ?? null,
    heartbeat_at: r ? new Date(r.heartbeatAt).toISOString() : null,
    metrics_url: r?.metrics
      ? `http://${r.metrics.host.includes(':') ? `[${r.metrics.host}]` : r.metrics.host}:${r.metrics.port}/metrics`
      : null,
    instances: [...cell.actual.values()]
      .sort((a, b) => a.instanceId.localeCompare(b.instanceId))
      .map((a) => ({
        id: a.instanceId,
        service: a.service,
        role: a.role,
        state: a.state,
        epoch: a.epoch,
        port: a.port,
        healthy: a.healthy,
      })),
  };
}

export function registerCellsApi(server: HttpServer, { directory, store }: CellsApiDeps): void {
  const views = async (): Promise<CellView[]> => {
    const [cells, services] = await Promise.all([directory.snapshot(), store.list()]);
    const promised = new Map<string, number>();
    for (const s of services)
      for (const i of s.instances) promised.set(i.cell, (promised.get(i.cell) ?? 0) + s.volume.sizeMb);
    return [...cells.values()].map((c) => cellView(c, promised.get(c.name) ?? 0));
  };

  server.route('get', '/v3/cells', 'read', async () => ({ body: { resources: await views() } }));

  server.route('get', '/v3/cells/:name', 'read', async (ctx) => {
    const cell = (await views()).find((c) => c.name === ctx.params.name);
    if (!cell) throw new SfError(ErrorCode.NotFound, `no cell named '${ctx.params.name}'`, 'name');
    return { body: cell };
  });
}
