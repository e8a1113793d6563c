/** The API's view of a service: its record merged with what the cells report right now. */
import { DEFAULT_SNAPSHOT_KEEP } from './snapshot-keep';
import { ErrorCode } from '../../common';
import { defaultDiskSync, type SidecarKind } from '../../protocol';
import type { CellSnapshot } from './cell-directory';
import type { InstanceRecord, InstanceView, ServiceRecord, ServiceView } from './service-types';

export function instanceView(
  instance: InstanceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
  sidecars: readonly SidecarKind[] = [],
): InstanceView {
  const cell = cells.get(instance.cell);
  const actual = cell?.actual.get(instance.id);
  // A report from before the current generation describes an earlier run, not this one.
  const current = actual && actual.generation >= instance.generation ? actual : undefined;
  const state = !cell?.alive
    ? 'lost'
    : !instance.specWritten || !current
      ? 'pending'
      : current.state === 'running' && current.degraded
        ? 'degraded'
        : current.state;
  return {
    id: instance.id,
    cell: instance.cell,
    zone: instance.zone,
    role: instance.role,
    state,
    epoch: instance.epoch,
    host: actual?.host ?? cell?.record?.host ?? null,
    port: actual?.port ?? null,
    healthy: current?.healthy ?? null,
    ...(sidecars.length
      ? {
          sidecars: sidecars.map((name) => {
            const running = current?.state === 'running' ? current.sidecars?.find((s) => s.kind === name) : undefined;
            return { name, port: running?.port || null, ...(running?.tls ? { tls: true } : {}) };
          }),
        }
      : {}),
    // A primary that cannot commit says why where operators already look.
    last_error:
      current?.state === 'running' && current.degraded
        ? { code: ErrorCode.CommitCheckFailed, message: current.degraded }
        : (current?.lastError ?? null),
  };
}

export function serviceView(record: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): ServiceView {
  return {
    name: record.name,
    engine: record.engine,
    ...(record.executor ? { executor: record.executor } : {}),
    ...(record.sidecars?.length ? { sidecars: record.sidecars } : {}),
    ...(record.resources
      ? {
          resources: {
            ...(record.resources.memoryMb ? { memory_mb: record.resources.memoryMb } : {}),
            ...(record.resources.cpus ? { cpus: record.resources.cpus } : {}),
          },
        }
      : {}),
    replicas: record.replicas,
    durability: record.durability,
    disk_sync: record.diskSync ?? defaultDiskSync(record.durability, record.engine),
    snapshot_keep: record.snapshotKeep ?? DEFAULT_SNAPSHOT_KEEP,
    volume: { size_mb: record.volume.sizeMb },
    fencing: record.fencing,
    tls: record.tls ?? 'off',
    router_group: record.routerGroup,
    port: record.port,
    status: record.status,
    message: record.message,
    epoch: record.epoch,
    instances: record.instances.map((i) => instanceView(i, cells, record.sidecars)),
    created_at: new Date(record.createdAt).toISOString(),
    updated_at: new Date(record.updatedAt).toISOString(),
  };
}
