/**
 * Snapshots and restore (docs/volumes.md, Snapshots). A snapshot is taken on the primary's cell
 * by its engine (Redis BGSAVE, PostgreSQL pg_basebackup) into that cell's snapshot store, then
 * copied cell to cell over TCP into a second cell's store when there is one, so losing one cell
 * loses no snapshot. Retention keeps a service's newest `keep` snapshots. A restore creates a new
 * service whose first primary is placed on a cell holding the snapshot and starts from its data.
 */
import { DEFAULT_SNAPSHOT_KEEP } from './snapshot-keep';
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { ErrorCode, SfError, errorMessageOf } from '../../common';
import type { CellRecord } from '../../protocol';
import { sendOrder, type OrderRequest } from '../state/cell-client';
import type { CellDirectory, CellSnapshot } from './cell-directory';
import type { ServiceStore } from './service-store';
import type { ServiceRecord } from './service-types';
import { SnapshotRecords, type SnapshotRecord } from './snapshot-records';

export interface SnapshotOptions {
  /** @default 7 snapshots kept per service; older ones are deleted after a new one is taken */
  keep?: number;
}

export { DEFAULT_SNAPSHOT_KEEP };
/** A snapshot of a large database may take minutes; so may its copy. */
const SNAPSHOT_ORDER_TIMEOUT_MS = 900_000;
const COPY_TIMEOUT_MS = 3_600_000;

/** `NAME-YYYYMMDDTHHMMSSZ-RANDOM`: sorts by time within a service, names a directory safely. */
export function newSnapshotId(service: string, now = new Date()): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'z')
    .toLowerCase();
  return `${service}-${stamp}-${randomBytes(3).toString('hex')}`;
}

export class SnapshotCoordinator {
  readonly records: SnapshotRecords;

  constructor(
    private readonly redis: Redis,
    private readonly store: ServiceStore,
    private readonly directory: CellDirectory,
  ) {
    this.records = new SnapshotRecords(redis, store.keys);
  }

  private async order(cell: string, request: OrderRequest, timeoutMs: number): Promise<Record<string, unknown>> {
    const result = await sendOrder(this.redis, this.store.keys, cell, request, { timeoutMs, pollMs: 100 });
    if (!result.ok)
      throw new SfError(
        result.error?.code === ErrorCode.TransferFailed ? ErrorCode.TransferFailed : ErrorCode.SnapshotFailed,
        `${request.type} on cell ${cell}: ${result.error?.message ?? 'failed'}`,
      );
    return result.data ?? {};
  }

  /** Takes a snapshot of the service's primary; resolves once it is in one or two stores. */
  async take(name: string, options: SnapshotOptions = {}): Promise<SnapshotRecord> {
    const service = await this.store.mustGet(name);
    if (service.engine === 'tcp')
      throw new SfError(
        ErrorCode.EngineUnsupported,
        'engine tcp has no snapshots: the platform cannot know its data',
        'engine',
      );
    if (service.status === 'deleting')
      throw new SfError(ErrorCode.SnapshotFailed, `service ${name} is being deleted`, 'name');
    const primary = service.instances.find((i) => i.role === 'primary' && !i.fenced);
    const cells = await this.directory.snapshot();
    const actual = primary ? cells.get(primary.cell)?.actual.get(primary.id) : undefined;
    if (!primary || !cells.get(primary.cell)?.alive || actual?.state !== 'running')
      throw new SfError(ErrorCode.NoPrimary, `service ${name} has no running primary to take a snapshot of`, 'name');
    const id = newSnapshotId(name);
    let data: Record<string, unknown>;
    try {
      data = await this.order(
        primary.cell,
        { type: 'snapshot', instanceId: primary.id, snapshotId: id },
        SNAPSHOT_ORDER_TIMEOUT_MS,
      );
    } catch (err) {
      await this.records.event({
        type: 'snapshot-failed',
        service: name,
        instanceId: primary.id,
        cell: primary.cell,
        message: `snapshot ${id} of ${primary.id} failed: ${errorMessageOf(err)}`,
      });
      throw err;
    }
    const record: SnapshotRecord = {
      id,
      service: name,
      engine: service.engine,
      instanceId: primary.id,
      cells: [primary.cell],
      bytes: Number(data.bytes ?? 0),
      createdAt: Number(data.createdAt ?? Date.now()),
      from: {
        replicas: service.replicas,
        durability: service.durability,
        ...(service.diskSync ? { diskSync: service.diskSync } : {}),
        sizeMb: service.volume.sizeMb,
        routerGroup: service.routerGroup,
        ...(service.executor ? { executor: service.executor } : {}),
      },
    };
    await this.records.put(record);
    await this.records.event({
      type: 'snapshot-created',
      service: name,
      instanceId: primary.id,
      cell: primary.cell,
      message: `snapshot ${id} of ${primary.id} taken on ${primary.cell} (${record.bytes} bytes)`,
    });
    const copied = await this.copyToSecondCell(record, cells);
    // The request's keep, else the service's stored setting (sf update-service --snapshot-keep).
    await this.applyRetention(name, options.keep ?? service.snapshotKeep ?? DEFAULT_SNAPSHOT_KEEP);
    return copied;
  }

  /**
   * A second copy on another live cell (another zone preferred). A failed copy leaves the
   * snapshot on its first cell and says so in an event; the snapshot itself stands.
   */
  private async copyToSecondCell(
    record: SnapshotRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
  ): Promise<SnapshotRecord> {
    const source = cells.get(record.cells[0]);
    const transfer = source?.record?.transfer;
    if (!source?.record || !transfer) return record;
    const zone = source.record.zone;
    const targets = [...cells.values()]
      .filter((c): c is CellSnapshot & { record: CellRecord } => c.alive && c.name !== source.name && !!c.record)
      .sort((a, b) => Number(a.record.zone === zone) - Number(b.record.zone === zone) || a.name.localeCompare(b.name));
    const target = targets[0];
    if (!target) return record;
    try {
      await this.copy(record.id, source.name, transfer, target.name);
      const next = { ...record, cells: [...record.cells, target.name] };
      // The record may have been deleted meanwhile: a copy of a deleted snapshot is removed.
      if (!(await this.records.get(record.id))) {
        await this.order(target.name, { type: 'delete-snapshot', snapshotId: record.id }, 60_000).catch(
          () => undefined,
        );
        return record;
      }
      await this.records.put(next);
      await this.records.event({
        type: 'snapshot-copied',
        service: record.service,
        cell: target.name,
        message: `snapshot ${record.id} copied from ${source.name} to ${target.name}`,
      });
      return next;
    } catch (err) {
      await this.records.event({
        type: 'snapshot-failed',
        service: record.service,
        cell: target.name,
        message: `snapshot ${record.id} not copied to ${target.name} (kept on ${source.name} only): ${errorMessageOf(err)}`,
      });
      return record;
    }
  }

  /** Grants the target a one-time token on the source's transfer port, then has it pull. */
  private async copy(
    id: string,
    sourceCell: string,
    transfer: { host: string; port: number },
    targetCell: string,
  ): Promise<void> {
    const token = randomBytes(24).toString('hex');
    await this.order(sourceCell, { type: 'export-snapshot', snapshotId: id, token, ttlMs: COPY_TIMEOUT_MS }, 60_000);
    await this.order(targetCell, { type: 'import-snapshot', snapshotId: id, source: transfer, token }, COPY_TIMEOUT_MS);
  }

  /** Deletes a snapshot from every cell that holds it, then its record. */
  async delete(id: string, reason = 'deleted on request'): Promise<SnapshotRecord> {
    const record = await this.records.get(id);
    if (!record) throw new SfError(ErrorCode.NotFound, `no snapshot '${id}'`, 'id');
    const cells = await this.directory.snapshot();
    const left: string[] = [];
    for (const cell of record.cells) {
      if (!cells.get(cell)?.alive) {
        left.push(cell);
        continue;
      }
      await this.order(cell, { type: 'delete-snapshot', snapshotId: id }, 120_000).catch(() => left.push(cell));
    }
    await this.records.remove(id);
    await this.records.event({
      type: 'snapshot-deleted',
      service: record.service,
      message: `snapshot ${id} ${reason}${left.length ? `; cells ${left.join(', ')} were not reachable and keep their copy until it is deleted there` : ''}`,
    });
    return record;
  }

  private async applyRetention(service: string, keep: number): Promise<void> {
    const all = await this.records.list(service);
    for (const old of all.slice(keep))
      await this.delete(old.id, `removed by retention (newest ${keep} kept)`).catch(() => undefined);
  }

  /** Where a restore of `record` may place its primary: live cells holding a copy. */
  async holders(record: SnapshotRecord): Promise<string[]> {
    const cells = await this.directory.snapshot();
    return record.cells.filter(
      (c) => cells.get(c)?.alive && cells.get(c)?.record?.snapshots?.includes(record.id) !== false,
    );
  }

  async restored(service: ServiceRecord, record: SnapshotRecord): Promise<void> {
    await this.records.event({
      type: 'service-restored',
      service: service.name,
      instanceId: service.instances[0]?.id,
      cell: service.instances[0]?.cell,
      message: `service ${service.name} created from snapshot ${record.id} of ${record.service}`,
    });
  }
}
