/**
 * One convergence step for one service, run by the leader only: place what is missing, write
 * desired specs in dependency order (the primary first, replicas once the primary has an
 * address), replace replicas whose cell died, restart failed replicas, hand a lost primary to the
 * FailoverCoordinator, tear down deleted services, and emit the route. Every write carries the
 * leader's fence, so it is a no-op for a deposed leader.
 */
import type { Order } from '../../protocol';
import { putDesiredOps, queueOrderOp, removeDesiredOps } from '../state/cell-client';
import { DEFAULT_PRIMARY_LEASE_TTL_MS, instanceSpec } from '../services/instance-spec';
import { isSfError, withDefaults } from '../../common';
import type { LeaderFence } from '../leader/fenced-commit';
import { cellCandidates } from '../placement/cell-candidates';
import { runPlacementAuction } from '../placement/placement-auction';
import type { CasOp } from '../state/cas-commit';
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceChange, ServiceStore } from '../services/service-store';
import type { InstanceRecord, ServiceEvent, ServiceRecord, ServiceStatus } from '../services/service-types';
import type { FailoverCoordinator, PrimaryLossReason } from '../services/failover-coordinator';
import type { RouteEmitter } from '../services/route-emitter';
import { DEFAULT_REPLACED_VOLUME_RETENTION_MS, putTombstoneOp } from './volume-tombstones';

export interface ServiceReconcilerOptions {
  /** Minimum time between two restarts of one failed replica. @default 5000 */
  restartBackoffMs?: number;
  /** How long a deleted service waits for its cells to report instances stopped. @default 30000 */
  deleteGraceMs?: number;
  /** Lease TTL written into primary specs, so a hung engine loses its lease; 0 = none. @default 3000 */
  primaryLeaseTtlMs?: number;
  /**
   * How long the volume of a replica replaced because its cell was gone is kept before it may be
   * deleted (never delete data because a cell was late). @default 21600000 (6 h)
   */
  replacedVolumeRetentionMs?: number;
}

/** What the loop knows about this pass beyond the cells' reports. */
export interface ReconcileContext {
  /**
   * True while the leader's term is younger than the cell grace (convergence-loop.ts): a cell
   * without a registration may merely not have re-registered since a restart, so nothing is
   * judged dead — no cell-dead or lease-lost failover, no replica replaced.
   */
  cellGrace: boolean;
}

export const DEFAULT_SERVICE_RECONCILER_OPTIONS: Required<ServiceReconcilerOptions> = {
  restartBackoffMs: 5_000,
  deleteGraceMs: 30_000,
  primaryLeaseTtlMs: DEFAULT_PRIMARY_LEASE_TTL_MS,
  replacedVolumeRetentionMs: DEFAULT_REPLACED_VOLUME_RETENTION_MS,
};

type EventInput = Omit<ServiceEvent, 'at' | 'leaderToken'>;

/**
 * A replica a move builds (`moveOf`) belongs to its mover, which judges its cell's death itself
 * (3 s without a registration, volume-move-catch-up.ts) and removes it. Convergence drops it for
 * a dead cell only after this much silence, when no mover can still be looking after it: a
 * receiving cell on a loaded machine can miss a heartbeat, and dropping its replica at once
 * failed a move that was progressing.
 */
export const MOVE_TARGET_SILENCE_MS = 30_000;

export class ServiceReconciler {
  private readonly opts: Required<ServiceReconcilerOptions>;
  /** When each cell was first seen without a registration, since it last had one. */
  private readonly deadSince = new Map<string, number>();

  constructor(
    private readonly store: ServiceStore,
    private readonly emitter: RouteEmitter,
    private readonly coordinator: FailoverCoordinator,
    options: ServiceReconcilerOptions = {},
  ) {
    this.opts = withDefaults(DEFAULT_SERVICE_RECONCILER_OPTIONS, options);
  }

  async reconcile(
    name: string,
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
    context: ReconcileContext = { cellGrace: false },
  ): Promise<void> {
    const before = await this.store.get(name);
    if (before?.status === 'deleting') {
      // With the leader's token as each key's tag: a deposed leader's removal is refused once a
      // newer leader wrote the route.
      await this.emitter.removeMany([before], fence.token);
      await this.store.change(name, fence, async (rec) => {
        if (!rec || rec.status !== 'deleting') return { done: undefined };
        const change = this.teardown(rec, cells, fence);
        return change ? { change, result: undefined } : { done: undefined };
      });
      return;
    }
    // A starting service whose instances all run as specified gets its route first, so this
    // reconcile can already say running (the route must hold every instance before that): one
    // reconcile per new service instead of two, which at a burst of placements halved the time
    // until they all ran. Only then: the route is what the record's next version gives too.
    if (before?.status === 'starting' && readyToRun(before, cells))
      await this.emitter.sync(before, cells, fence.token, { keepUnreported: context.cellGrace });
    const after = await this.store.change(name, fence, async (rec, snapshot) => {
      if (!rec || rec.status === 'deleting') return { done: rec };
      // What the other services' records place on each cell: the sums over the snapshot, less
      // this service's own stored record (its next version is counted at placement).
      const usage = this.store.usageAt(snapshot);
      const stored = snapshot.services.get(name);
      const othersMb = (cell: string): number => usage.promisedMb(cell) - placedMb(stored, cell);
      const change = await this.step(rec, cells, fence, othersMb, context);
      return change ? { change, result: change.record } : { done: rec };
    });
    if (after && after.status !== 'deleting')
      await this.emitter.sync(after, cells, fence.token, { keepUnreported: context.cellGrace });
  }

  /**
   * The first placement of services that have no instance yet (`isNewService`), many in one
   * commit: at 10,000 services one commit per service held scheduling to a few a second behind a
   * burst of creates. Each service is decided as `reconcile` would (auction, the primary's spec),
   * each auction counting the space the earlier ones of the batch took. Returns the names it
   * decided; the others (changed meanwhile: deleted, placed) are for `reconcile`. No route is
   * written: a service that never ran has none, and it is reconciled again once its cell reports.
   */
  async placeNew(
    names: readonly string[],
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
    context: ReconcileContext = { cellGrace: false },
  ): Promise<ReadonlySet<string>> {
    return this.store.changeMany(names, fence, async (current, snapshot) => {
      const usage = this.store.usageAt(snapshot);
      const taken = new Map<string, number>();
      const changes = new Map<string, ServiceChange>();
      const decided = new Set<string>();
      for (const name of names) {
        const rec = current.get(name);
        if (!rec || !isNewService(rec)) continue;
        decided.add(name);
        const othersMb = (cell: string): number => usage.promisedMb(cell) + (taken.get(cell) ?? 0);
        const change = await this.step(rec, cells, fence, othersMb, context);
        if (!change) continue;
        changes.set(name, change);
        for (const i of change.record?.instances ?? []) taken.set(i.cell, (taken.get(i.cell) ?? 0) + rec.volume.sizeMb);
      }
      return { changes, result: decided };
    });
  }

  /**
   * The step from starting to running for many services at once: those `readyToRun` (every
   * instance runs as specified) get their routes in one write, then their records in one fenced
   * commit, each decided by the same step as `reconcile` (10,000 services created together
   * otherwise waited for one route write and one commit each). Returns the names it decided; the
   * others (changed meanwhile, not ready) are for `reconcile`. The route of a service whose record
   * moved on between the two writes is for `reconcile` too: it is written from the record it
   * commits, as `reconcile` does.
   */
  async runReady(
    names: readonly string[],
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
    context: ReconcileContext = { cellGrace: false },
  ): Promise<ReadonlySet<string>> {
    const { services } = await this.store.snapshot();
    const ready = new Map<string, string>();
    for (const name of names) {
      const rec = services.get(name);
      if (rec && rec.status === 'starting' && readyToRun(rec, cells)) ready.set(name, JSON.stringify(rec));
    }
    if (ready.size === 0) return new Set();
    const records = [...ready.keys()].map((n) => services.get(n) as ServiceRecord);
    await this.emitter.syncMany(records, cells, fence.token, { keepUnreported: context.cellGrace });
    // The routes as they are now, so each step can tell whether its record's route is current
    // without a read of its own (the check `reconcile` makes).
    const routes = await this.emitter.currentRoutes(records);
    const written = await this.store.changeMany([...ready.keys()], fence, async (current, snapshot) => {
      const usage = this.store.usageAt(snapshot);
      const changes = new Map<string, ServiceChange>();
      const decided = new Set<string>();
      for (const [name, synced] of ready) {
        const rec = current.get(name);
        // Changed since its route was written: decided alone, from what it is now.
        if (!rec || !routes.has(name) || JSON.stringify(rec) !== synced) continue;
        decided.add(name);
        const stored = snapshot.services.get(name);
        const othersMb = (cell: string): number => usage.promisedMb(cell) - placedMb(stored, cell);
        const route = routes.get(name) ?? null;
        const change = await this.step(rec, cells, fence, othersMb, context, (next) =>
          this.emitter.isCurrentGiven(next, route, cells),
        );
        if (change) changes.set(name, change);
      }
      return { changes, result: { decided, changes } };
    });
    // As `reconcile` does after its commit: the route follows the record committed (nothing to
    // write when the step only marked it running).
    const after = [...written.changes.values()]
      .map((c) => c.record)
      .filter((r): r is ServiceRecord => r !== null && r.status !== 'deleting');
    if (after.length) await this.emitter.syncMany(after, cells, fence.token, { keepUnreported: context.cellGrace });
    return written.decided;
  }

  /**
   * Deletion for many services at once (`status: 'deleting'`): their routes removed in one
   * write (`RouteEmitter.removeMany`), then each record's next teardown step — specs removed from
   * their cells, then, once the cells report the instances stopped, tombstones and the record
   * gone — in one fenced commit, as `reconcile` does one service at a time (10,000 deletions took
   * two minutes of one route write and one commit each). `decided`: the names it decided;
   * the others (no longer deleting, gone) are for `reconcile`. `idle`: those of them whose step
   * changed nothing (waiting for their cells to report the instances stopped).
   */
  async tearDown(
    names: readonly string[],
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
  ): Promise<{ decided: ReadonlySet<string>; idle: ReadonlySet<string> }> {
    const { services } = await this.store.snapshot();
    const deleting = names
      .map((n) => services.get(n))
      .filter((r): r is ServiceRecord => r !== undefined && r.status === 'deleting');
    if (deleting.length === 0) return { decided: new Set(), idle: new Set() };
    await this.emitter.removeMany(deleting, fence.token);
    return this.store.changeMany(
      deleting.map((r) => r.name),
      fence,
      async (current) => {
        const changes = new Map<string, ServiceChange>();
        const decided = new Set<string>();
        const idle = new Set<string>();
        for (const [name, rec] of current) {
          if (!rec || rec.status !== 'deleting') continue;
          decided.add(name);
          const change = this.teardown(rec, cells, fence);
          if (change) changes.set(name, change);
          else idle.add(name);
        }
        return { changes, result: { decided, idle } };
      },
    );
  }

  /**
   * The recheck round's look at settled services, many at once: their routes read in one HMGET
   * per router group and compared with what their records and reports want (a TLS route's
   * certificate is renewed on the way, as `reconcile` does). For a settled service that is all a
   * reconcile can change (its record says running and every instance runs as specified), so only
   * those whose route drifted need one; at 10,000 services the round reconciled 33 a second, six
   * reads each, most of the state store's commands at rest. Returns the names found as they
   * should be; the others are for `reconcile`.
   */
  async recheck(
    records: readonly ServiceRecord[],
    cells: ReadonlyMap<string, CellSnapshot>,
  ): Promise<ReadonlySet<string>> {
    const routes = await this.emitter.currentRoutes(records);
    const fine = new Set<string>();
    for (const rec of records) {
      if (rec.status !== 'running' || !routes.has(rec.name)) continue;
      if (await this.emitter.isCurrentGiven(rec, routes.get(rec.name) ?? null, cells)) fine.add(rec.name);
    }
    return fine;
  }

  /** How long `cell` has been seen without a registration (0 when first seen so now). */
  private silentFor(cell: string, now: number): number {
    const since = this.deadSince.get(cell) ?? now;
    this.deadSince.set(cell, since);
    return now - since;
  }

  /**
   * Services that look settled (running, every instance running as specified on a live cell)
   * but were not reconciled in this term, many at once: a new leader's first look at 10,000
   * services, or services on a cell whose reports changed. Their routes are read in one HMGET per
   * router group and each record goes through the same step as `reconcile`, with nothing written:
   * a service whose step changes nothing and whose route is current is as a reconcile would leave
   * it (which would write nothing either). Returns those names; the others are for `reconcile`.
   * Callers pass only services whose primary is not lost: the step of one that is starts its
   * failover, which is `reconcile`'s to do.
   */
  async confirm(
    records: readonly ServiceRecord[],
    fence: LeaderFence,
    cells: ReadonlyMap<string, CellSnapshot>,
    context: ReconcileContext = { cellGrace: false },
  ): Promise<ReadonlySet<string>> {
    const routes = await this.emitter.currentRoutes(records);
    const snapshot = await this.store.snapshot();
    const usage = this.store.usageAt(snapshot);
    const fine = new Set<string>();
    for (const rec of records) {
      if (rec.status !== 'running' || !routes.has(rec.name)) continue;
      const route = routes.get(rec.name) ?? null;
      if (!(await this.emitter.isCurrentGiven(rec, route, cells))) continue;
      const othersMb = (cell: string): number => usage.promisedMb(cell) - placedMb(rec, cell);
      const change = await this.step(rec, cells, fence, othersMb, context, (next) =>
        this.emitter.isCurrentGiven(next, route, cells),
      );
      if (change === null) fine.add(rec.name);
    }
    return fine;
  }

  /** Computes the next record of a live service, or null when nothing changes. */
  private async step(
    rec: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    fence: LeaderFence,
    othersMb: (cell: string) => number,
    context: ReconcileContext,
    routeCurrent: (next: ServiceRecord) => Promise<boolean> = (next) => this.emitter.isCurrent(next, cells),
  ): Promise<ServiceChange | null> {
    const now = Date.now();
    const next: ServiceRecord = { ...rec, instances: rec.instances.map((i) => ({ ...i })) };
    const ops: CasOp[] = [];
    const events: EventInput[] = [];
    const alive = (cell: string): boolean => {
      const up = cells.get(cell)?.alive === true;
      if (up) this.deadSince.delete(cell);
      return up;
    };
    const actualOf = (i: InstanceRecord) => {
      const a = cells.get(i.cell)?.actual.get(i.id);
      return a && a.generation >= i.generation ? a : undefined;
    };

    // A record behind what its cells report: control restored an older copy of its state after
    // the store lost data (state-keeper.ts), and a failover had happened after that copy was
    // written. An instance running as primary with an epoch above the service's was promoted
    // since: the record adopts it. Demoting it to follow the stale record would throw away every
    // write it acknowledged since its promotion.
    const ahead = this.primaryAhead(next, cells, actualOf);
    if (ahead) {
      this.adoptPrimary(next, ahead.inst, ahead.epoch, cells, ops);
      events.push({
        type: 'service-updated',
        service: rec.name,
        instanceId: ahead.inst.id,
        cell: ahead.inst.cell,
        message: `the record was behind its cells (state restored from an older copy): ${ahead.inst.id} runs as primary at epoch ${ahead.epoch}, above the record's ${rec.epoch}; adopted as the primary`,
      });
      next.leaderToken = fence.token;
      next.updatedAt = now;
      return { record: next, extraOps: ops, events };
    }

    // Replicas on dead cells are dropped here and re-created below on live cells; never during
    // the grace of a new term, when a missing registration may only mean a restart.
    // The volume is kept: a tombstone lets it be deleted only after the retention.
    for (const inst of [...next.instances]) {
      if (context.cellGrace || inst.role !== 'replica' || alive(inst.cell)) continue;
      if (inst.moveOf && this.silentFor(inst.cell, now) < MOVE_TARGET_SILENCE_MS) continue;
      next.instances = next.instances.filter((i) => i.id !== inst.id);
      ops.push(...removeDesiredOps(this.store.keys, inst.cell, inst.id));
      const deleteAfter = now + this.opts.replacedVolumeRetentionMs;
      ops.push(
        putTombstoneOp(this.store.keys, {
          cell: inst.cell,
          instanceId: inst.id,
          service: rec.name,
          reason: 'replaced',
          at: now,
          deleteAfter,
        }),
      );
      events.push({
        type: 'instance-removed',
        service: rec.name,
        instanceId: inst.id,
        cell: inst.cell,
        message: `replica ${inst.id} removed: cell ${inst.cell} is not alive; its volume is kept until ${new Date(deleteAfter).toISOString()}`,
      });
    }

    // Failed replicas on live cells restart in place (same volume) after a backoff.
    for (const inst of next.instances) {
      const actual = actualOf(inst);
      // A fenced replica is a deposed primary: it rejoins below, once a new primary serves.
      if (inst.role !== 'replica' || inst.fenced || !inst.specWritten || actual?.state !== 'failed') continue;
      if (inst.restartedAt && now - inst.restartedAt < this.opts.restartBackoffMs) continue;
      inst.generation += 1;
      inst.restartedAt = now;
      ops.push(...this.specOps(next, inst, inst.upstream ?? primaryAddress(next, cells)));
      events.push({
        type: 'instance-restarted',
        service: rec.name,
        instanceId: inst.id,
        cell: inst.cell,
        message: `replica ${inst.id} failed (${actual.lastError?.message ?? 'exited'}); restarting it (generation ${inst.generation})`,
      });
    }

    // An old primary fenced while its cell was dead stays a fenced replica in the record; its engine
    // may still run as a primary, or its cell shot it on return (a cell cut off past its TTL shoots
    // primaries fenced meanwhile before it registers again). Once its cell is back and the new
    // primary runs, a new generation restarts it as a replica of the new primary (PostgreSQL
    // rewinds it first), as a failover does for a live cell. Without this it kept claiming primary,
    // or stayed fenced, until an operator ran `sf unfence` (found by the fault-schedule checker).
    const serving = next.instances.find((i) => i.role === 'primary' && !i.fenced);
    const newPrimary = context.cellGrace || !serving ? null : primaryAddress(next, cells);
    for (const inst of next.instances) {
      const actual = actualOf(inst);
      if (!newPrimary || inst.role !== 'replica' || !inst.fenced || !alive(inst.cell)) continue;
      const deposed =
        actual?.state === 'running'
          ? actual.role === 'primary'
          : actual?.state === 'fenced' || actual?.state === 'failed' || actual?.state === 'stopped';
      if (!deposed) continue;
      if (inst.restartedAt && now - inst.restartedAt < this.opts.restartBackoffMs) continue;
      inst.generation += 1;
      inst.restartedAt = now;
      inst.upstream = newPrimary;
      delete inst.fenced;
      ops.push(...this.specOps(next, inst, newPrimary));
      events.push({
        type: 'instance-restarted',
        service: rec.name,
        instanceId: inst.id,
        cell: inst.cell,
        message: `deposed primary ${inst.id} is back with cell ${inst.cell}; restarting it as a replica of ${newPrimary.host}:${newPrimary.port} (generation ${inst.generation})`,
      });
    }

    let problem: { status: ServiceStatus; message: string } | null = null;
    const primary = next.instances.find((i) => i.role === 'primary');
    if (primary) {
      const actual = primary.specWritten ? actualOf(primary) : undefined;
      const reason = primaryLossReason(primary, alive(primary.cell), actual, context);
      if (reason) {
        const outcome = await this.coordinator.primaryLost({ service: next, primary, reason, fence, cells });
        if (outcome.kind === 'handling') return null;
        if (outcome.kind === 'degraded') problem = { status: 'degraded', message: outcome.message };
      } else if (actual?.state === 'running' && actual.degraded) {
        // A primary that cannot commit (its cell's commit check) is not `running`.
        problem = { status: 'degraded', message: `writes cannot commit on primary ${primary.id}: ${actual.degraded}` };
      }
    }

    // Placement of whatever is missing: the whole service at first, later lost replicas.
    const slots: string[] = [];
    if (!primary && next.instances.length === 0)
      slots.push(...Array.from({ length: next.replicas + 1 }, (_, k) => `${next.name}-${next.nextIndex + k}`));
    else if (primary) {
      // A replica a move is building takes no slot: it replaces another instance.
      const missing = next.replicas - next.instances.filter((i) => i.role === 'replica' && !i.moveOf).length;
      for (let k = 0; k < missing; k++) slots.push(`${next.name}-${next.nextIndex + k}`);
    }
    if (slots.length > 0) {
      try {
        const decisions = runPlacementAuction(
          {
            service: next.name,
            engine: next.engine,
            ...(next.executor ? { executor: next.executor } : {}),
            ...(next.sidecars?.length ? { sidecars: next.sidecars } : {}),
            sizeMb: next.volume.sizeMb,
            slots: slots.map((instanceId) => ({ instanceId })),
            occupied: next.instances.map((i) => ({ cell: i.cell, zone: i.zone })),
          },
          cellCandidates(cells, (cell) => othersMb(cell) + placedMb(next, cell)),
        );
        const initial = next.instances.length === 0;
        decisions.forEach((d, k) => {
          const inst: InstanceRecord = {
            id: d.instanceId,
            cell: d.cell,
            zone: d.zone,
            role: initial && k === 0 ? 'primary' : 'replica',
            epoch: next.epoch,
            generation: 0,
            specWritten: false,
            placedAt: now,
          };
          next.instances.push(inst);
          events.push({
            type: 'instance-placed',
            service: rec.name,
            instanceId: inst.id,
            cell: inst.cell,
            message: `${inst.role} ${inst.id} placed on ${inst.cell} (zone ${inst.zone}, score ${d.score.toFixed(1)})`,
          });
        });
        next.nextIndex += decisions.length;
      } catch (err) {
        if (!isSfError(err)) throw err;
        problem ??= { status: next.instances.length === 0 ? 'unplaceable' : 'degraded', message: err.message };
      }
    }

    // Desired specs in order: the primary as soon as it is placed, replicas once it has an address.
    const upstream = primaryAddress(next, cells);
    for (const inst of next.instances) {
      if (inst.specWritten) continue;
      if (inst.role === 'primary') {
        if (!alive(inst.cell)) continue;
        inst.specWritten = true;
        ops.push(...this.specOps(next, inst, null));
      } else if (upstream && alive(inst.cell)) {
        inst.specWritten = true;
        inst.upstream = upstream;
        ops.push(...this.specOps(next, inst, upstream));
      }
    }
    // The primary came back on another address (its cell restarted it elsewhere): replicas follow.
    for (const inst of next.instances) {
      if (inst.role !== 'replica' || !inst.specWritten || !upstream || !alive(inst.cell)) continue;
      if (inst.upstream && inst.upstream.host === upstream.host && inst.upstream.port === upstream.port) continue;
      inst.upstream = upstream;
      ops.push(...this.specOps(next, inst, upstream));
      const order: Order = {
        type: 'repoint',
        orderId: `repoint-${inst.id}-${now}`,
        instanceId: inst.id,
        primary: upstream,
      };
      ops.push(queueOrderOp(this.store.keys, inst.cell, order));
      events.push({
        type: 'instance-repointed',
        service: rec.name,
        instanceId: inst.id,
        cell: inst.cell,
        message: `replica ${inst.id} now follows ${upstream.host}:${upstream.port}`,
      });
    }

    // Running also means routers can reach it: the route must already hold every instance, so a
    // client that waits for 'running' never connects before its route exists.
    const allRunning =
      next.instances.filter((i) => !i.moveOf).length === next.replicas + 1 &&
      next.instances.every((i) => i.specWritten && actualOf(i)?.state === 'running');
    const complete = allRunning && (await routeCurrent(next));
    const status: ServiceStatus = problem?.status ?? (complete ? 'running' : 'starting');
    const message = problem?.message ?? null;
    if (status !== rec.status || message !== rec.message) {
      const type: ServiceEvent['type'] =
        status === 'running'
          ? 'service-running'
          : status === 'unplaceable'
            ? 'service-unplaceable'
            : status === 'degraded'
              ? primary && problem?.message.startsWith('primary')
                ? 'primary-lost'
                : 'service-degraded'
              : 'service-placed';
      if (status !== 'starting' || rec.status === 'pending')
        events.push({ type, service: rec.name, message: message ?? `service ${rec.name} is ${status}` });
    }
    next.status = status;
    next.message = message;
    if (ops.length === 0 && events.length === 0 && JSON.stringify(next) === JSON.stringify(rec)) return null;
    next.leaderToken = fence.token;
    next.updatedAt = now;
    return { record: next, extraOps: ops, events };
  }

  /** Deletion: stop instances (remove their specs), delete stopped volumes, then the record. */
  private teardown(
    rec: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    fence: LeaderFence,
  ): ServiceChange | null {
    const now = Date.now();
    const ops: CasOp[] = [];
    const keep: InstanceRecord[] = [];
    for (const inst of rec.instances) {
      const cell = cells.get(inst.cell);
      if (inst.specWritten) {
        ops.push(...removeDesiredOps(this.store.keys, inst.cell, inst.id));
        keep.push({ ...inst, specWritten: false, restartedAt: now });
        continue;
      }
      const actual = cell?.actual.get(inst.id);
      const stopped = !actual || actual.state === 'stopped' || actual.state === 'failed' || actual.state === 'fenced';
      const expired = now - (inst.restartedAt ?? 0) > this.opts.deleteGraceMs;
      if (cell?.alive && actual && !stopped && !expired) {
        keep.push(inst);
        continue;
      }
      // The collector deletes it once the cell is alive and reports it stopped, however long
      // the cell is away; until then the tombstone remembers the decision.
      ops.push(
        putTombstoneOp(this.store.keys, {
          cell: inst.cell,
          instanceId: inst.id,
          service: rec.name,
          reason: 'service-deleted',
          at: now,
          deleteAfter: now,
        }),
      );
    }
    if (keep.length > 0) {
      if (ops.length === 0) return null;
      return { record: { ...rec, instances: keep, leaderToken: fence.token, updatedAt: now }, extraOps: ops };
    }
    return {
      record: null,
      extraOps: ops,
      events: [
        {
          type: 'service-deleted',
          service: rec.name,
          message: `service ${rec.name} deleted; port ${rec.port} is free`,
        },
      ],
    };
  }

  /** The instance reporting itself primary at the highest epoch above the service's, if any. */
  private primaryAhead(
    rec: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    actualOf: (i: InstanceRecord) => { state: string; role: string; epoch: number } | undefined,
  ): { inst: InstanceRecord; epoch: number } | null {
    let best: { inst: InstanceRecord; epoch: number } | null = null;
    for (const inst of rec.instances) {
      const actual = actualOf(inst);
      if (cells.get(inst.cell)?.alive !== true || actual?.state !== 'running' || actual.role !== 'primary') continue;
      if (actual.epoch > rec.epoch && (!best || actual.epoch > best.epoch)) best = { inst, epoch: actual.epoch };
    }
    return best;
  }

  /**
   * Makes `primary` the record's primary at `epoch`, as the cells report it; every other instance
   * becomes its replica at that epoch. Instances already running as such keep their generation
   * (the specs are rewritten to match them); one that still runs as a primary gets a new
   * generation, so its cell restarts it as a replica (PostgreSQL rewinds it first).
   */
  private adoptPrimary(
    next: ServiceRecord,
    primary: InstanceRecord,
    epoch: number,
    cells: ReadonlyMap<string, CellSnapshot>,
    ops: CasOp[],
  ): void {
    const reported = (i: InstanceRecord) => cells.get(i.cell)?.actual.get(i.id);
    next.epoch = epoch;
    for (const inst of next.instances) {
      const actual = reported(inst);
      inst.epoch = epoch;
      delete inst.fenced;
      if (inst === primary) {
        inst.role = 'primary';
        inst.generation = Math.max(inst.generation, actual?.generation ?? 0);
        delete inst.upstream;
        continue;
      }
      inst.role = 'replica';
      const stillPrimary = actual?.state === 'running' && actual.role === 'primary';
      inst.generation = Math.max(inst.generation, actual?.generation ?? 0) + (stillPrimary ? 1 : 0);
    }
    const address = reported(primary);
    const upstream = address && address.port !== null ? { host: address.host, port: address.port } : null;
    for (const inst of next.instances) {
      if (inst !== primary) inst.upstream = upstream ?? inst.upstream;
      if (inst.specWritten) ops.push(...this.specOps(next, inst, inst === primary ? null : upstream));
    }
  }

  private specOps(
    service: ServiceRecord,
    inst: InstanceRecord,
    upstream: { host: string; port: number } | null,
  ): CasOp[] {
    return putDesiredOps(
      this.store.keys,
      inst.cell,
      instanceSpec(service, inst, upstream, this.opts.primaryLeaseTtlMs),
    );
  }
}

/**
 * Why the primary counts as lost, or null. During the cell grace only what a live cell reports
 * counts (a failed engine, a fence in the record); a missing registration or an unrenewed lease
 * may be a restart still in progress.
 */
export function primaryLossReason(
  primary: Pick<InstanceRecord, 'fenced'>,
  cellAlive: boolean,
  actual: { state: string; leaseHeld: boolean | null } | undefined,
  context: ReconcileContext,
): PrimaryLossReason | null {
  // A fence already recorded is a decision taken earlier: it resumes even during the grace.
  if (!cellAlive) return context.cellGrace ? (primary.fenced ? 'fenced' : null) : 'cell-dead';
  if (primary.fenced) return 'fenced';
  if (actual?.state === 'failed') return 'instance-failed';
  if (actual?.state === 'running' && actual.leaseHeld === false) return context.cellGrace ? null : 'lease-lost';
  return null;
}

/**
 * Every instance placed as the service asks, its spec written, not fenced, on a live cell that
 * reports it running at its generation: all a `starting` service waits for before it runs.
 */
export function readyToRun(record: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): boolean {
  if (record.instances.length !== record.replicas + 1) return false;
  return record.instances.every((i) => {
    const cell = cells.get(i.cell);
    const actual = cell?.actual.get(i.id);
    return (
      cell?.alive === true &&
      i.specWritten &&
      !i.fenced &&
      !i.moveOf &&
      actual !== undefined &&
      actual.state === 'running' &&
      actual.generation >= i.generation &&
      actual.healthy !== false &&
      actual.leaseHeld !== false &&
      !actual.degraded
    );
  });
}

/**
 * A service never placed: no instance, waiting for (or refused by) its first auction. Its next
 * record depends on the cells' capacity alone (no report, no route, no failover), so `placeNew`
 * decides many at once.
 */
export function isNewService(record: ServiceRecord): boolean {
  return record.instances.length === 0 && record.status === 'pending';
}

/** Where replicas connect: the primary's address once its cell reports it running. */
function primaryAddress(
  service: ServiceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
): { host: string; port: number } | null {
  const primary = service.instances.find((i) => i.role === 'primary');
  if (!primary || !primary.specWritten) return null;
  const actual = cells.get(primary.cell)?.actual.get(primary.id);
  if (!actual || actual.state !== 'running' || actual.port === null || actual.generation < primary.generation)
    return null;
  return { host: actual.host, port: actual.port };
}

/** The volume space a record places on `cell`. */
function placedMb(record: ServiceRecord | undefined, cell: string): number {
  if (!record) return 0;
  let mb = 0;
  for (const i of record.instances) if (i.cell === cell) mb += record.volume.sizeMb;
  return mb;
}
