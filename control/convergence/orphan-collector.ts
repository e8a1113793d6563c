/**
 * Deletes volumes no service owns any more: a replica replaced while its cell was down, or an
 * instance of a service deleted while a cell was away. Only stopped or failed instances on live
 * cells are collected (a cell stops an instance that is not desired on its own), and an order is
 * re-sent at most every `retryMs`, since a cell may be busy or the order may fail.
 */
import { fencedCommit, type LeaderFence } from '../leader/fenced-commit';
import type { CasOp } from '../state/cas-commit';
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceRecord } from '../services/service-types';
import type { Redis } from 'ioredis';
import type { KeyLayout } from '../../protocol/keys';
import type { Order } from '../../protocol/cell-protocol';
import { queueOrderOp } from '../state/cell-client';

export class OrphanCollector {
  private readonly ordered = new Map<string, number>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
    /** @default 5000 ms between two orders for the same volume (an order can fail while the cell still stops the instance) */
    private readonly retryMs = 5_000,
  ) {}

  /**
   * `cells` must have been read before `services`: an instance shows up in a cell's report only
   * after a record names it, so an older cell view never shows an instance a newer record lacks.
   */
  async collect(
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
    services: Iterable<ServiceRecord>,
  ): Promise<number> {
    const owned = new Set<string>();
    for (const s of services) for (const i of s.instances) owned.add(`${i.cell}/${i.id}`);
    const now = Date.now();
    for (const [key, at] of this.ordered) if (now - at >= this.retryMs) this.ordered.delete(key);
    const ops: CasOp[] = [];
    for (const cell of cells.values()) {
      if (!cell.alive) continue;
      for (const actual of cell.actual.values()) {
        const key = `${cell.name}/${actual.instanceId}`;
        if (owned.has(key) || !actual.volumePresent || (actual.state !== 'stopped' && actual.state !== 'failed'))
          continue;
        if (now - (this.ordered.get(key) ?? 0) < this.retryMs) continue;
        this.ordered.set(key, now);
        const order: Order = {
          type: 'delete-volume',
          orderId: `gc-${actual.instanceId}-${now}`,
          instanceId: actual.instanceId,
        };
        ops.push(queueOrderOp(this.keys, cell.name, order));
      }
    }
    if (ops.length === 0) return 0;
    const res = await fencedCommit(this.redis, fence, [], ops);
    return res.ok ? ops.length : 0;
  }
}
