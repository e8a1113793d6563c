/**
 * Snapshot records (docs/volumes.md, Snapshots): which cells' snapshot stores hold a copy of a
 * service's data as of one instant, and the settings of the service it came from (the defaults of
 * a restore). Kept in the `snapshots` hash; the data itself is on the cells.
 */
import type { Redis } from 'ioredis';
import type { DiskSync, Durability, EngineKind, ExecutorKind, KeyLayout } from '../../protocol';
import { SERVICE_EVENT_HISTORY } from './service-store';
import type { ServiceEvent } from './service-types';

export interface SnapshotRecord {
  id: string;
  service: string;
  engine: EngineKind;
  /** The instance it was taken from (the primary then). */
  instanceId: string;
  /** Cells whose snapshot store holds a complete copy; the first is where it was taken. */
  cells: string[];
  bytes: number;
  createdAt: number;
  /** The source service's settings, defaults of a restore. */
  from: {
    replicas: number;
    durability: Durability;
    diskSync?: DiskSync;
    sizeMb: number;
    routerGroup: string;
    executor?: ExecutorKind;
  };
}

/** The `/v3` shape: snake_case with ISO times. */
export interface SnapshotView {
  id: string;
  service: string;
  engine: EngineKind;
  instance: string;
  cells: string[];
  bytes: number;
  size_mb: number;
  created_at: string;
}

export function snapshotView(r: SnapshotRecord): SnapshotView {
  return {
    id: r.id,
    service: r.service,
    engine: r.engine,
    instance: r.instanceId,
    cells: r.cells,
    bytes: r.bytes,
    size_mb: r.from.sizeMb,
    created_at: new Date(r.createdAt).toISOString(),
  };
}

export class SnapshotRecords {
  constructor(
    private readonly redis: Redis,
    readonly keys: KeyLayout,
  ) {}

  async get(id: string): Promise<SnapshotRecord | null> {
    const text = await this.redis.hget(this.keys.snapshots, id);
    return text ? (JSON.parse(text) as SnapshotRecord) : null;
  }

  /** Newest first; one service's when `service` is given. */
  async list(service?: string): Promise<SnapshotRecord[]> {
    const all = Object.values(await this.redis.hgetall(this.keys.snapshots)).map(
      (t) => JSON.parse(t) as SnapshotRecord,
    );
    return all
      .filter((r) => !service || r.service === service)
      .sort((a, b) => b.createdAt - a.createdAt || b.id.localeCompare(a.id));
  }

  async put(record: SnapshotRecord): Promise<void> {
    await this.redis.hset(this.keys.snapshots, record.id, JSON.stringify(record));
  }

  async remove(id: string): Promise<void> {
    await this.redis.hdel(this.keys.snapshots, id);
  }

  /** A service event outside a record change: kept in the event log and published. */
  async event(event: Omit<ServiceEvent, 'at' | 'leaderToken'>): Promise<void> {
    const text = JSON.stringify({ ...event, at: Date.now(), leaderToken: 0 } satisfies ServiceEvent);
    await this.redis
      .multi()
      .lpush(this.keys.serviceEventLog, text)
      .ltrim(this.keys.serviceEventLog, 0, SERVICE_EVENT_HISTORY - 1)
      .publish(this.keys.serviceEvents, text)
      .exec();
  }
}
