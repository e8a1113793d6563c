/**
 * A move by engine catch-up (docs/volumes.md, Moving a volume): instead of stopping the source,
 * copying what changed and starting the target from the copy, the target cell runs a new replica
 * of the service (`moveOf` names the instance it replaces) that the engine itself fills and keeps
 * current — Redis full sync then the replication stream, PostgreSQL pg_basebackup then WAL
 * streaming — while the source serves. Once the replica has reached the primary's position:
 *
 * - a primary is handed over by the planned switchover of docs/fencing.md (route fenced under a
 *   new epoch, lease floor raised, the source's writes paused — Redis — or, for engines that
 *   cannot pause, the source stopped cleanly after the exact catch-up, promotion, route
 *   published); the source leaves the service in the promotion commit and its cell stops it
 *   after the new route is out: writes fail only for that role switch, not for a copy, an engine
 *   start or a shutdown;
 * - a replica needs no switch: the primary is never touched.
 *
 * The source instance is then removed from the record and its volume deleted. Before the switch a
 * failure only removes the new replica (its volume through a tombstone, so a dead cell's copy
 * goes too once it is back); the source serves throughout. A failed switchover is undone by the
 * switchover itself (the source serves again under the new epoch).
 */
import { ErrorCode, SfError } from '../../common';
import { putDesiredOps, removeDesiredOps } from '../state/cell-client';
import type { CasOp } from '../state/cas-commit';
import type { CellDirectory, CellSnapshot } from './cell-directory';
import { instanceSpec } from './instance-spec';
import type { ServiceStore } from './service-store';
import type { InstanceRecord, ServiceRecord } from './service-types';

/** What the move needs from fencing, wired at the top of control (services sit below failover). */
export interface MoveSwitching {
  /** True when this control may run a switchover now (it leads). */
  canSwitch(): boolean;
  /**
   * Planned switchover of `service` to its replica `target`, which replaces the old primary: the
   * old primary leaves the service in the promotion commit (its volume tombstoned) instead of
   * rejoining as a replica. Resolves with how long writes were refused.
   */
  switchover(service: string, target: string): Promise<{ windowMs: number | null }>;
  /** A store op that lets the volume of `instanceId` on `cell` be deleted once the cell can (tombstone). */
  tombstoneOp(cell: string, instanceId: string, service: string): CasOp;
}

/** The part of a move record the catch-up reads and updates. */
export interface CatchUpMove {
  id: string;
  service: string;
  instanceId: string;
  targetInstanceId: string;
  from: string;
  to: string;
  role: 'primary' | 'replica';
  bytes: number;
  totalBytes: number | null;
  rateBps: number | null;
  etaS: number | null;
}

const MIB = 1024 * 1024;
/** A target cell silent this long is dead for the move. */
export const DEAD_AFTER_MS = 3_000;

export class MoveCatchUp {
  constructor(
    private readonly store: ServiceStore,
    private readonly directory: CellDirectory,
    private readonly switching: MoveSwitching,
    private readonly primaryLeaseTtlMs?: number,
  ) {}

  /** Adds the replacement replica on the target cell, following the current primary; returns its id. */
  async addTarget(m: CatchUpMove): Promise<string> {
    const cells = await this.directory.snapshot();
    const zone = cells.get(m.to)?.record?.zone ?? '';
    return this.store.change<string>(m.service, null, async (cur) => {
      const rec = cur ? editable(cur) : null;
      const source = rec?.instances.find((i) => i.id === m.instanceId);
      if (!rec || !source || source.cell !== m.from || rec.status === 'deleting')
        throw new SfError(ErrorCode.ActionRefused, `${m.instanceId} changed before the move started`);
      const primary = rec.instances.find((i) => i.role === 'primary' && !i.fenced);
      const upstream = primary ? addressOf(primary, cells) : null;
      if (!upstream)
        throw new SfError(ErrorCode.ActionRefused, `service ${m.service} has no running primary to copy from`);
      const inst: InstanceRecord = {
        id: `${rec.name}-${rec.nextIndex}`,
        cell: m.to,
        zone,
        role: 'replica',
        epoch: rec.epoch,
        generation: 0,
        specWritten: true,
        placedAt: Date.now(),
        upstream,
        moveOf: m.instanceId,
      };
      rec.nextIndex += 1;
      rec.instances.push(inst);
      rec.updatedAt = Date.now();
      const ops = putDesiredOps(this.store.keys, m.to, instanceSpec(rec, inst, upstream, this.primaryLeaseTtlMs));
      return { change: { record: rec, extraOps: ops }, result: inst.id };
    });
  }

  /**
   * Waits until the new replica runs and has reached the primary's position as it was when the
   * replica first ran (so it holds the whole data set, not an empty start). Fails when the target
   * cell dies, the replica is removed or fails, or the source stops being what the move moves
   * (a primary that failed over meanwhile: normal failover rules applied, the move gives up).
   */
  async awaitCaughtUp(m: CatchUpMove, timeoutMs: number, progress: () => Promise<void>): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let goal: bigint | null = null;
    let missingSince: number | null = null;
    let lastBytes = 0;
    let lastAt = Date.now();
    for (;;) {
      const rec = await this.store.mustGet(m.service);
      const target = rec.instances.find((i) => i.id === m.targetInstanceId);
      const source = rec.instances.find((i) => i.id === m.instanceId);
      if (!target) throw new SfError(ErrorCode.TransferFailed, `${m.targetInstanceId} was removed from ${m.to}`);
      if (!source || source.cell !== m.from)
        throw new SfError(ErrorCode.TransferFailed, `${m.instanceId} changed during the move`);
      if (m.role === 'primary' && (source.role !== 'primary' || source.fenced))
        throw new SfError(
          ErrorCode.TransferFailed,
          `primary ${m.instanceId} was lost during the copy; failover took over and the move gave up`,
        );
      const cells = await this.directory.snapshot();
      // A loaded cell can miss heartbeats for a second; only a longer silence counts as death.
      missingSince = cells.get(m.to)?.alive ? null : (missingSince ?? Date.now());
      if (missingSince !== null && Date.now() - missingSince >= DEAD_AFTER_MS)
        throw new SfError(ErrorCode.TransferFailed, `cell ${m.to} died during the copy`);
      const actual = cells.get(m.to)?.actual.get(target.id);
      if (actual && actual.generation >= target.generation) {
        if (actual.state === 'failed')
          throw new SfError(
            ErrorCode.TransferFailed,
            `${target.id} failed on ${m.to}: ${actual.lastError?.message ?? 'exited'}`,
          );
        const now = Date.now();
        const bytes = (actual.volumeUsedMb ?? 0) * MIB;
        if (bytes > lastBytes && now > lastAt) {
          const rate = ((bytes - lastBytes) * 1000) / (now - lastAt);
          m.rateBps = m.rateBps === null ? Math.round(rate) : Math.round(0.7 * m.rateBps + 0.3 * rate);
          m.bytes = bytes;
          m.etaS = m.totalBytes && m.rateBps ? Math.max(0, Math.round((m.totalBytes - bytes) / m.rateBps)) : null;
          lastBytes = bytes;
          lastAt = now;
          await progress();
        }
        if (actual.state === 'running') {
          const primary = rec.instances.find((i) => i.role === 'primary');
          const primaryPos = primary ? position(cells.get(primary.cell), primary.id) : null;
          // The goal is taken once the replica streams: every write acknowledged before then.
          if (actual.streaming === true) goal ??= primaryPos;
          const pos = position(cells.get(m.to), target.id);
          // A replica answers before it has its first full copy; only a streaming one counts.
          if (goal !== null && pos !== null && actual.streaming === true && pos >= goal) return;
        }
      }
      if (Date.now() > deadline)
        throw new SfError(ErrorCode.Timeout, `${m.targetInstanceId} did not catch up within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** The switch of a primary: the planned switchover to the caught-up replica. */
  switchover(m: CatchUpMove): Promise<{ windowMs: number | null }> {
    return this.switching.switchover(m.service, m.targetInstanceId);
  }

  /**
   * One commit once the new instance has the data (and, for a primary, the role): the source
   * leaves the record and its cell, the new instance is an ordinary member from now on.
   */
  async removeSource(m: CatchUpMove): Promise<void> {
    await this.store.change(m.service, null, async (cur) => {
      const rec = cur ? editable(cur) : null;
      const source = rec?.instances.find((i) => i.id === m.instanceId);
      const target = rec?.instances.find((i) => i.id === m.targetInstanceId);
      // A primary's switchover retires the source in the commit that promotes the target.
      if (rec && target && !source && !target.moveOf) return { done: undefined };
      if (!rec || !source || !target || source.cell !== m.from || source.role === 'primary')
        throw new SfError(ErrorCode.ActionRefused, `${m.instanceId} changed during the move`);
      rec.instances = rec.instances.filter((i) => i.id !== source.id);
      delete target.moveOf;
      rec.updatedAt = Date.now();
      return {
        change: { record: rec, extraOps: removeDesiredOps(this.store.keys, m.from, source.id) },
        result: undefined,
      };
    });
  }

  /**
   * The move failed before the switch: the new replica leaves the record and its cell; its volume
   * is deleted by the tombstone collector once its cell is alive and has stopped it. A replica
   * that was promoted after all (a switchover whose outcome is unknown) stays, as a member.
   */
  async dropTarget(m: CatchUpMove): Promise<void> {
    await this.store.change(m.service, null, async (cur) => {
      const rec = cur ? editable(cur) : null;
      const target = rec?.instances.find((i) => i.id === m.targetInstanceId);
      if (!rec || !target) return { done: undefined };
      if (target.role === 'primary') {
        delete target.moveOf;
        return { change: { record: rec }, result: undefined };
      }
      rec.instances = rec.instances.filter((i) => i.id !== target.id);
      rec.updatedAt = Date.now();
      return {
        change: {
          record: rec,
          extraOps: [
            ...removeDesiredOps(this.store.keys, target.cell, target.id),
            this.switching.tombstoneOp(target.cell, target.id, rec.name),
          ],
        },
        result: undefined,
      };
    });
  }

  /** When deleting the source volume at once fails, a tombstone has it deleted later. */
  async tombstoneSource(m: CatchUpMove): Promise<void> {
    await this.store.change(m.service, null, async (cur) =>
      cur
        ? {
            change: { record: cur, extraOps: [this.switching.tombstoneOp(m.from, m.instanceId, m.service)] },
            result: undefined,
          }
        : { done: undefined },
    );
  }

  /** How much the target has to hold: the source's measured volume. */
  static totalBytes(cells: ReadonlyMap<string, CellSnapshot>, cell: string, id: string): number | null {
    const used = cells.get(cell)?.actual.get(id)?.volumeUsedMb;
    return used ? used * MIB : null;
  }
}

function editable(cur: ServiceRecord): ServiceRecord {
  return { ...cur, instances: cur.instances.map((i) => ({ ...i })) };
}

function addressOf(
  inst: InstanceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
): { host: string; port: number } | null {
  const a = cells.get(inst.cell)?.actual.get(inst.id);
  return a && a.state === 'running' && a.port !== null ? { host: a.host, port: a.port } : null;
}

function position(cell: CellSnapshot | undefined, id: string): bigint | null {
  const v = cell?.actual.get(id)?.positionValue;
  return v && /^\d+$/.test(v) ? BigInt(v) : null;
}
