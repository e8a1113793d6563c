/**
 * Deletes the volumes tombstones allow (volume-tombstones.ts): a deleted service's, and a
 * replaced replica's once its retention has passed. Only stopped, failed or fenced instances on
 * live cells are collected (a cell stops an instance that is not desired on its own), an order is
 * re-sent at most every `retryMs`, and each deletion is a service event. A volume without a
 * tombstone is never deleted, whatever the records say: it is logged once and kept.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { fencedCommit, type LeaderFence } from '../leader/fenced-commit';
import type { CasOp } from '../state/cas-commit';
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceEvent, ServiceRecord } from '../services/service-types';
import { SERVICE_EVENT_HISTORY } from '../services/service-store';
import type { KeyLayout, Order } from '../../protocol';
import { queueOrderOp } from '../state/cell-client';
import { parseTombstones, planVolumeDeletions } from './volume-tombstones';

export class OrphanCollector {
  private readonly ordered = new Map<string, number>();
  private readonly reported = new Set<string>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
    /** @default 5000 ms between two orders for the same volume (an order can fail while the cell still stops the instance) */
    private readonly retryMs = 5_000,
    private readonly logger?: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * `cells` must have been read before `services`: an instance shows up in a cell's report only
   * after a record names it, so an older cell view never shows an instance a newer record lacks.
   * Returns how many delete orders were queued.
   */
  async collect(
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
    services: Iterable<ServiceRecord>,
  ): Promise<number> {
    const owned = new Set<string>();
    for (const s of services) for (const i of s.instances) owned.add(`${i.cell}/${i.id}`);
    const tombstones = parseTombstones(await this.redis.hgetall(this.keys.volumeTombstones));
    const now = this.now();
    const plan = planVolumeDeletions(cells.values(), owned, tombstones, now);
    for (const u of plan.unowned) {
      const key = `${u.cell}/${u.instanceId}`;
      if (this.reported.has(key)) continue;
      this.reported.add(key);
      this.logger?.warn(
        { cell: u.cell, instanceId: u.instanceId, service: u.service },
        'a volume no service owns and no tombstone names: kept (delete it by hand if it is not needed)',
      );
    }
    for (const [key, at] of this.ordered) if (now - at >= this.retryMs) this.ordered.delete(key);
    const ops: CasOp[] = [];
    for (const key of plan.cleared) ops.push({ cmd: 'HDEL', key: this.keys.volumeTombstones, field: key });
    let queued = 0;
    for (const tomb of plan.deletes) {
      const key = `${tomb.cell}/${tomb.instanceId}`;
      if (this.ordered.has(key)) continue;
      this.ordered.set(key, now);
      const order: Order = {
        type: 'delete-volume',
        orderId: `gc-${tomb.instanceId}-${now}`,
        instanceId: tomb.instanceId,
      };
      ops.push(queueOrderOp(this.keys, tomb.cell, order));
      const event: ServiceEvent = {
        type: 'volume-deleted',
        service: tomb.service,
        instanceId: tomb.instanceId,
        cell: tomb.cell,
        message:
          tomb.reason === 'service-deleted'
            ? `volume of ${tomb.instanceId} on ${tomb.cell} deleted: service ${tomb.service} was deleted`
            : `volume of replaced replica ${tomb.instanceId} on ${tomb.cell} deleted: replaced at ${new Date(tomb.at).toISOString()}, retention over`,
        at: now,
        leaderToken: fence.token,
      };
      const text = JSON.stringify(event);
      ops.push({ cmd: 'LPUSH_CAPPED', key: this.keys.serviceEventLog, value: text, cap: SERVICE_EVENT_HISTORY });
      ops.push({ cmd: 'PUBLISH', channel: this.keys.serviceEvents, message: text });
      queued++;
    }
    if (ops.length === 0) return 0;
    const res = await fencedCommit(this.redis, fence, [], ops);
    return res.ok ? queued : 0;
  }
}
