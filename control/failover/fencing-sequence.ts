/**
 * The fencing sequence of issue 5, one method per phase, each step recorded in the fencing
 * history. Order matters and is the whole point:
 *
 * 1. route fence: the service epoch grows, the old primary's backend is published `fenced`, and
 *    control waits (bounded) until every live router applied that table, so no router can hand a
 *    client to the old primary any more;
 * 2. shoot: `fence` order (SIGKILL) when the cell answers, and the lease floor is raised so the old
 *    primary can never renew its lease or start as primary with the old epoch;
 * 3. network fence: `fence-network` on a cell that has its own network (a namespace or a host);
 * 4. only then promote the most up-to-date replica with the new epoch, repoint the others, and
 *    publish the route with the new primary.
 *
 * Every record write carries the leader fence, so a deposed leader stops at its next write.
 */
import type { Redis } from 'ioredis';
import { putDesiredOps, sendOrder, type OrderRequest } from '../state/cell-client';
import { type OrderResult, fenceLease } from '../../protocol';
import type { LeaderFence } from '../leader/fenced-commit';
import type { RouteEmitter } from '../services/route-emitter';
import { instanceSpec } from '../services/instance-spec';
import type { CellDirectory, CellSnapshot } from '../services/cell-directory';
import type { ServiceStore } from '../services/service-store';
import type { InstanceRecord, ServiceRecord } from '../services/service-types';
import type { CasOp } from '../state/cas-commit';
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import { ErrorCode, SfError } from '../../common';
import type { FailoverOptions } from './failover-options';
import type { FencingHistory, FencingStep, FencingStepInput } from './fencing-history';
import { chooseReplica, type Candidate } from './replica-choice';
import { waitForRouters } from './router-ack';

export interface FencingDeps {
  redis: Redis;
  store: ServiceStore;
  directory: CellDirectory;
  emitter: RouteEmitter;
  groups: RouterGroupStore;
  routes: TcpRouteStore;
  history: FencingHistory;
  options: Required<FailoverOptions>;
}

/** One fencing operation: its id, trigger and leader fence, and the steps it recorded. */
export class FencingOperation {
  readonly steps: FencingStep[] = [];

  constructor(
    readonly id: string,
    readonly service: string,
    readonly trigger: string,
    readonly fence: LeaderFence,
    private readonly history: FencingHistory,
  ) {}

  async record(input: FencingStepInput): Promise<void> {
    this.steps.push(
      await this.history.record(
        this.fence,
        { operation: this.id, trigger: this.trigger, service: this.service },
        input,
      ),
    );
  }
}

const LOOPBACK = /^(127\.|::1$|localhost$)/;

export class FencingSequence {
  constructor(private readonly deps: FencingDeps) {}

  /** Steps 1-3 for the service's current primary; idempotent, resumes a half-done fence. */
  async fencePrimary(op: FencingOperation): Promise<ServiceRecord> {
    const { store } = this.deps;
    const at = Date.now();
    // Step 1: the epoch grows and the primary is marked fenced in the record, which is what the
    // route emitter renders; a new leader sees the mark and resumes.
    const marked = await store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      if (!cur) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} no longer exists`);
      const primary = cur.instances.find((i) => i.role === 'primary');
      if (!primary) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} has no primary`);
      if (primary.fenced) return { done: cur };
      const epoch = cur.epoch + 1;
      const next: ServiceRecord = {
        ...cur,
        epoch,
        leaderToken: op.fence.token,
        updatedAt: at,
        instances: cur.instances.map((i) =>
          i.id === primary.id ? { ...i, fenced: { epoch, at, trigger: op.trigger, complete: false } } : i,
        ),
      };
      return { change: { record: next }, result: next };
    });
    const primary = marked.instances.find((i) => i.role === 'primary') as InstanceRecord;
    const epoch = primary.fenced?.epoch ?? marked.epoch;
    const cells = await this.deps.directory.snapshot();
    const version = await this.publish(marked, cells, op.fence);
    await op.record({
      step: 'route-fence',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `epoch ${primary.epoch} -> ${epoch}; backend ${primary.id} published fenced in table version ${version}`,
    });
    await this.awaitRouters(op, marked, version, epoch);

    // Step 2: shoot, then the lease floor (which also covers a cell that never got the order).
    const cell = cells.get(primary.cell);
    if (cell?.alive) {
      const res = await this.order(primary.cell, { type: 'fence', instanceId: primary.id });
      if (res?.ok)
        await op.record({
          step: 'shoot',
          outcome: 'ok',
          instanceId: primary.id,
          cell: primary.cell,
          epoch,
          message: `SIGKILL by cell ${primary.cell} (was running: ${String(res.data?.wasRunning)})`,
        });
      else
        await op.record({
          step: 'shoot',
          outcome: 'degraded',
          instanceId: primary.id,
          cell: primary.cell,
          epoch,
          message: `cell ${primary.cell} did not confirm the fence order: ${res?.error?.message ?? 'no answer in time'}`,
        });
    } else {
      await op.record({
        step: 'shoot',
        outcome: 'skipped',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: `cell ${primary.cell} is not alive (registration expired); relying on the route fence and the lease floor`,
      });
    }
    const floor = await fenceLease(this.deps.redis, this.deps.store.keys, primary.id, epoch);
    await op.record({
      step: 'lease-floor',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `lease floor of ${primary.id} is ${floor}: no renewal or primary start below it`,
    });

    // Step 3: the network fence needs the fenced cell to act in its own network.
    const peers = this.networkPeers(primary.cell, cells);
    let networkPeers: string[] | undefined;
    if (!cell?.record || LOOPBACK.test(cell.record.host)) {
      await op.record({
        step: 'network-fence',
        outcome: 'skipped',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: `cell ${primary.cell} shares the host's loopback network; no separate network to cut`,
      });
    } else if (peers.length === 0) {
      await op.record({
        step: 'network-fence',
        outcome: 'skipped',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: `cell ${primary.cell} has no peers on other addresses to cut it from`,
      });
    } else if (!cell.alive) {
      await op.record({
        step: 'network-fence',
        outcome: 'skipped',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: `cell ${primary.cell} is unreachable, so it cannot install the fence (it is partitioned already); route fence and lease floor hold`,
      });
    } else {
      const res = await this.order(primary.cell, { type: 'fence-network', peers });
      if (res?.ok) networkPeers = peers;
      await op.record({
        step: 'network-fence',
        outcome: res?.ok ? 'ok' : 'degraded',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: res?.ok
          ? `cell ${primary.cell} cut from ${peers.join(', ')}`
          : `network fence failed: ${res?.error?.message ?? 'no answer in time'}`,
      });
    }

    return store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      const inst = cur?.instances.find((i) => i.id === primary.id);
      if (!cur || !inst?.fenced || inst.fenced.complete) return { done: cur ?? marked };
      const next: ServiceRecord = {
        ...cur,
        leaderToken: op.fence.token,
        updatedAt: Date.now(),
        instances: cur.instances.map((i) =>
          i.id === inst.id
            ? { ...i, fenced: { ...inst.fenced!, complete: true, ...(networkPeers ? { networkPeers } : {}) } }
            : i,
        ),
      };
      return { change: { record: next }, result: next };
    });
  }

  /**
   * Step 4: promotes the most up-to-date running replica (or `target`) with the service epoch,
   * repoints the other replicas, and publishes the route. `planned`: the old primary is alive
   * and is repointed instead of restarted.
   */
  async promote(op: FencingOperation, target?: string, planned = false): Promise<ServiceRecord> {
    const rec = await this.deps.store.mustGet(op.service);
    const old = rec.instances.find((i) => i.role === 'primary');
    const epoch = rec.epoch;
    const cells = await this.deps.directory.snapshot();
    const candidates = await this.candidates(rec, cells, target);
    const chosen = chooseReplica(candidates);
    if (!chosen)
      throw new SfError(ErrorCode.NoPromotionCandidate, `service ${rec.name} has no running replica to promote`);
    await op.record({
      step: 'choose',
      outcome: 'ok',
      instanceId: chosen.instanceId,
      cell: chosen.cell,
      epoch,
      message: `${chosen.instanceId} chosen (positions: ${candidates.map((c) => `${c.instanceId}=${c.positionValue ?? '?'}`).join(', ')})`,
    });

    const res = await this.order(chosen.cell, { type: 'promote', instanceId: chosen.instanceId, epoch });
    if (!res?.ok) {
      await op.record({
        step: 'promote',
        outcome: 'failed',
        instanceId: chosen.instanceId,
        cell: chosen.cell,
        epoch,
        message: res?.error?.message ?? 'no answer in time',
      });
      throw new SfError(
        ErrorCode.OrderFailed,
        `promote of ${chosen.instanceId} failed: ${res?.error?.message ?? 'no answer in time'}`,
      );
    }
    await op.record({
      step: 'promote',
      outcome: 'ok',
      instanceId: chosen.instanceId,
      cell: chosen.cell,
      epoch,
      message: `${chosen.instanceId} is primary with epoch ${epoch} at position ${String(res.data?.positionValue ?? '?')}`,
    });
    const actual = cells.get(chosen.cell)?.actual.get(chosen.instanceId);
    const address = { host: actual?.host ?? '', port: actual?.port ?? 0 };

    // Replicas (and a live old primary in a planned switchover) follow the new primary now; a
    // failed repoint leaves `upstream` unchanged, so the reconciler retries it.
    const followers = rec.instances.filter(
      (i) => i.id !== chosen.instanceId && i.role === 'replica' && !i.fenced && cells.get(i.cell)?.alive,
    );
    if (planned && old) followers.push(old);
    const repointed = new Set<string>();
    await Promise.all(
      followers.map(async (f) => {
        const r = await this.order(f.cell, { type: 'repoint', instanceId: f.id, primary: address });
        if (r?.ok) repointed.add(f.id);
        await op.record({
          step: 'repoint',
          outcome: r?.ok ? 'ok' : 'degraded',
          instanceId: f.id,
          cell: f.cell,
          epoch,
          message: r?.ok
            ? `${f.id} follows ${address.host}:${address.port}`
            : `repoint failed (${r?.error?.message ?? 'no answer'}); the reconciler retries`,
        });
      }),
    );

    const after = await this.deps.store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      if (!cur) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} no longer exists`);
      const next: ServiceRecord = {
        ...cur,
        leaderToken: op.fence.token,
        updatedAt: Date.now(),
        instances: cur.instances.map((i) => ({ ...i })),
      };
      const ops: CasOp[] = [];
      for (const inst of next.instances) {
        if (inst.id === chosen.instanceId) {
          inst.role = 'primary';
          inst.epoch = epoch;
          delete inst.upstream;
          delete inst.fenced;
          ops.push(
            ...putDesiredOps(
              this.deps.store.keys,
              inst.cell,
              instanceSpec(next, inst, null, this.deps.options.primaryLeaseTtlMs),
            ),
          );
        } else if (old && inst.id === old.id) {
          inst.role = 'replica';
          if (planned && repointed.has(inst.id)) {
            // Repointed live: no restart, and it serves as a replica at once.
            delete inst.fenced;
            inst.upstream = address;
            ops.push(...putDesiredOps(this.deps.store.keys, inst.cell, instanceSpec(next, inst, address)));
          } else if (!planned && cells.get(inst.cell)?.alive) {
            // Killed on a live cell: it comes back as a replica of the new primary (a new
            // generation restarts it with `replicaof`), never as a primary with an old epoch.
            inst.generation += 1;
            inst.restartedAt = Date.now();
            inst.upstream = address;
            delete inst.fenced;
            ops.push(...putDesiredOps(this.deps.store.keys, inst.cell, instanceSpec(next, inst, address)));
          }
          // On a dead cell it stays a fenced replica: the reconciler replaces it on a live cell.
        } else if (repointed.has(inst.id)) {
          inst.upstream = address;
          ops.push(...putDesiredOps(this.deps.store.keys, inst.cell, instanceSpec(next, inst, address)));
        }
      }
      return { change: { record: next, extraOps: ops }, result: next };
    });
    const rejoined = old && after.instances.find((i) => i.id === old.id && !i.fenced);
    if (old && !planned) {
      await op.record({
        step: 'rejoin',
        outcome: rejoined ? 'ok' : 'skipped',
        instanceId: old.id,
        cell: old.cell,
        epoch,
        message: rejoined
          ? `${old.id} restarts as a replica of ${chosen.instanceId}`
          : `${old.id} stays fenced (cell ${old.cell} not alive); a replacement replica is placed`,
      });
    }
    const version = await this.publish(after, await this.deps.directory.snapshot(), op.fence);
    await op.record({
      step: 'publish',
      outcome: 'ok',
      instanceId: chosen.instanceId,
      cell: chosen.cell,
      epoch,
      message: `route to ${chosen.instanceId} (${address.host}:${address.port}, epoch ${epoch}) in table version ${version}`,
    });
    return after;
  }

  /**
   * Planned switchover of a healthy primary without data loss: pause (route fence), wait for the
   * target to reach the primary's position, then promote and repoint the old primary.
   */
  async switchover(op: FencingOperation, target?: string): Promise<ServiceRecord> {
    const { store } = this.deps;
    const at = Date.now();
    const marked = await store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      const primary = cur?.instances.find((i) => i.role === 'primary');
      if (!cur || !primary) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} has no primary`);
      const epoch = cur.epoch + 1;
      const next: ServiceRecord = {
        ...cur,
        epoch,
        leaderToken: op.fence.token,
        updatedAt: at,
        instances: cur.instances.map((i) =>
          i.id === primary.id ? { ...i, fenced: { epoch, at, trigger: op.trigger, complete: false } } : i,
        ),
      };
      return { change: { record: next }, result: next };
    });
    const primary = marked.instances.find((i) => i.role === 'primary') as InstanceRecord;
    const epoch = marked.epoch;
    const cells = await this.deps.directory.snapshot();
    const version = await this.publish(marked, cells, op.fence);
    await op.record({
      step: 'route-fence',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `writes paused: ${primary.id} published fenced in table version ${version} (epoch ${primary.epoch} -> ${epoch})`,
    });
    await this.awaitRouters(op, marked, version, epoch);
    const floor = await fenceLease(this.deps.redis, this.deps.store.keys, primary.id, epoch);
    await op.record({
      step: 'lease-floor',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `lease floor of ${primary.id} is ${floor}`,
    });

    const candidates = await this.candidates(marked, cells, target);
    const chosen = chooseReplica(candidates);
    try {
      if (!chosen)
        throw new SfError(ErrorCode.NoPromotionCandidate, `service ${op.service} has no running replica to switch to`);
      const goal = await this.position(primary);
      if (goal === null) throw new SfError(ErrorCode.OrderFailed, `could not read the position of ${primary.id}`);
      const t0 = Date.now();
      for (;;) {
        const pos = await this.position({ id: chosen.instanceId, cell: chosen.cell });
        if (pos !== null && pos >= goal) break;
        if (Date.now() - t0 > this.deps.options.catchUpTimeoutMs) {
          throw new SfError(
            ErrorCode.CatchUpTimeout,
            `${chosen.instanceId} reached ${String(pos)} of ${goal} within ${this.deps.options.catchUpTimeoutMs} ms`,
          );
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      await op.record({
        step: 'catch-up',
        outcome: 'ok',
        instanceId: chosen.instanceId,
        cell: chosen.cell,
        epoch,
        message: `${chosen.instanceId} reached the primary's position ${goal} in ${Date.now() - t0} ms`,
      });
    } catch (err) {
      await this.abortSwitchover(op, primary, epoch, (err as Error).message);
      throw err;
    }
    return this.promote(op, chosen.instanceId, true);
  }

  /**
   * Lifts a network fence and lets a fenced instance rejoin as a replica when another primary
   * exists; a fenced instance that is still the primary stays fenced (promote first).
   */
  async unfence(op: FencingOperation): Promise<ServiceRecord> {
    const rec = await this.deps.store.mustGet(op.service);
    const cells = await this.deps.directory.snapshot();
    const fenced = rec.instances.filter((i) => i.fenced);
    if (fenced.length === 0) {
      await op.record({
        step: 'unfence',
        outcome: 'skipped',
        epoch: rec.epoch,
        message: 'no instance of the service is fenced',
      });
      return rec;
    }
    const primary = rec.instances.find((i) => i.role === 'primary' && !i.fenced);
    const rejoin = new Set<string>();
    for (const inst of fenced) {
      const alive = cells.get(inst.cell)?.alive === true;
      if (inst.fenced?.networkPeers?.length) {
        const res = alive
          ? await this.order(inst.cell, { type: 'unfence-network', peers: inst.fenced.networkPeers })
          : undefined;
        await op.record({
          step: 'unfence',
          outcome: res?.ok ? 'ok' : 'degraded',
          instanceId: inst.id,
          cell: inst.cell,
          epoch: rec.epoch,
          message: res?.ok
            ? `network fence of cell ${inst.cell} lifted`
            : `cell ${inst.cell} could not lift its network fence: ${res?.error?.message ?? 'not reachable'}`,
        });
      }
      if (inst.role === 'primary' || !primary) {
        await op.record({
          step: 'unfence',
          outcome: 'skipped',
          instanceId: inst.id,
          cell: inst.cell,
          epoch: rec.epoch,
          message: `${inst.id} stays fenced: no other primary yet (run a failover first); it never serves as primary with epoch ${inst.epoch}`,
        });
      } else if (alive) {
        rejoin.add(inst.id);
      } else {
        await op.record({
          step: 'unfence',
          outcome: 'skipped',
          instanceId: inst.id,
          cell: inst.cell,
          epoch: rec.epoch,
          message: `${inst.id} stays fenced: cell ${inst.cell} is not alive`,
        });
      }
    }
    if (rejoin.size === 0 || !primary) return rec;
    const address = primaryAddress(primary, cells);
    const after = await this.deps.store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      if (!cur) return { done: rec };
      const next: ServiceRecord = {
        ...cur,
        leaderToken: op.fence.token,
        updatedAt: Date.now(),
        instances: cur.instances.map((i) => ({ ...i })),
      };
      const ops: CasOp[] = [];
      for (const inst of next.instances) {
        if (!rejoin.has(inst.id) || !inst.fenced || !address) continue;
        delete inst.fenced;
        inst.role = 'replica';
        inst.generation += 1;
        inst.restartedAt = Date.now();
        inst.upstream = address;
        ops.push(...putDesiredOps(this.deps.store.keys, inst.cell, instanceSpec(next, inst, address)));
      }
      return { change: { record: next, extraOps: ops }, result: next };
    });
    for (const id of rejoin)
      await op.record({
        step: 'rejoin',
        outcome: address ? 'ok' : 'skipped',
        instanceId: id,
        epoch: rec.epoch,
        message: address ? `${id} restarts as a replica of ${primary.id}` : `primary ${primary.id} has no address yet`,
      });
    await this.publish(after, await this.deps.directory.snapshot(), op.fence);
    return after;
  }

  private async abortSwitchover(
    op: FencingOperation,
    primary: InstanceRecord,
    epoch: number,
    why: string,
  ): Promise<void> {
    // The old primary keeps its role, with the new epoch (its floor was raised to it).
    const res = await this.order(primary.cell, { type: 'promote', instanceId: primary.id, epoch });
    const after = await this.deps.store.change<ServiceRecord | null>(op.service, op.fence, async (cur) => {
      if (!cur) return { done: null };
      const next: ServiceRecord = {
        ...cur,
        leaderToken: op.fence.token,
        updatedAt: Date.now(),
        instances: cur.instances.map((i) => ({ ...i })),
      };
      const ops: CasOp[] = [];
      for (const inst of next.instances) {
        if (inst.id !== primary.id || !res?.ok) continue;
        delete inst.fenced;
        inst.epoch = epoch;
        ops.push(
          ...putDesiredOps(
            this.deps.store.keys,
            inst.cell,
            instanceSpec(next, inst, null, this.deps.options.primaryLeaseTtlMs),
          ),
        );
      }
      return { change: { record: next, extraOps: ops }, result: next };
    });
    if (after) await this.publish(after, await this.deps.directory.snapshot(), op.fence);
    await op.record({
      step: 'abort',
      outcome: res?.ok ? 'ok' : 'failed',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `switchover abandoned (${why}); ${res?.ok ? `${primary.id} serves again with epoch ${epoch}` : `${primary.id} stays fenced: ${res?.error?.message ?? 'no answer'}`}`,
    });
  }

  private async awaitRouters(op: FencingOperation, rec: ServiceRecord, version: number, epoch: number): Promise<void> {
    const group = await this.deps.groups.get(rec.routerGroupGuid);
    if (!group) return;
    const ack = await waitForRouters(this.deps.routes, group, version, this.deps.options.routerAckTimeoutMs);
    await op.record({
      step: 'router-ack',
      outcome: ack.ok ? 'ok' : 'degraded',
      epoch,
      message: ack.ok
        ? `${ack.routers} live router(s) applied version ${version} in ${ack.waitedMs} ms`
        : `router(s) ${ack.lagging.join(', ')} did not apply version ${version} within ${ack.waitedMs} ms; continuing`,
    });
  }

  /** Writes the route from the record and returns the group's table version now in force. */
  private async publish(
    rec: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    fence: LeaderFence,
  ): Promise<number> {
    await this.deps.emitter.sync(rec, cells, fence.token);
    const group = await this.deps.groups.get(rec.routerGroupGuid);
    return group ? (await this.deps.routes.table(group)).version : 0;
  }

  private async candidates(
    rec: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    target?: string,
  ): Promise<Candidate[]> {
    const eligible = rec.instances.filter((i) => {
      const a = cells.get(i.cell)?.actual.get(i.id);
      return (
        i.role === 'replica' &&
        !i.fenced &&
        i.specWritten &&
        cells.get(i.cell)?.alive &&
        a?.state === 'running' &&
        a.generation >= i.generation
      );
    });
    if (target !== undefined && !eligible.some((i) => i.id === target)) {
      throw new SfError(
        ErrorCode.InvalidFailoverTarget,
        `${target} is not a running replica of ${rec.name} (eligible: ${eligible.map((i) => i.id).join(', ') || 'none'})`,
        'to',
      );
    }
    const chosen = target === undefined ? eligible : eligible.filter((i) => i.id === target);
    return Promise.all(
      chosen.map(async (i) => {
        const fresh = await this.position(i);
        return {
          instanceId: i.id,
          cell: i.cell,
          positionValue:
            fresh !== null ? fresh.toString() : (cells.get(i.cell)?.actual.get(i.id)?.positionValue ?? null),
        };
      }),
    );
  }

  /** The replication position read now through a `position` order; null when it cannot be read. */
  private async position(inst: Pick<InstanceRecord, 'id' | 'cell'>): Promise<bigint | null> {
    const res = await this.order(inst.cell, { type: 'position', instanceId: inst.id });
    const value = res?.ok ? res.data?.positionValue : undefined;
    return typeof value === 'string' && /^\d+$/.test(value) ? BigInt(value) : null;
  }

  /** Other cells' addresses, when they differ from the fenced cell's own and are not loopback. */
  private networkPeers(cellName: string, cells: ReadonlyMap<string, CellSnapshot>): string[] {
    const own = cells.get(cellName)?.record?.host;
    const peers = new Set<string>();
    for (const c of cells.values()) {
      const host = c.record?.host;
      if (c.name === cellName || !host || host === own || LOOPBACK.test(host)) continue;
      peers.add(host);
    }
    return [...peers].sort();
  }

  /** Sends an order; undefined when the cell does not answer in time. */
  private async order(cell: string, request: OrderRequest): Promise<OrderResult | undefined> {
    try {
      return await sendOrder(this.deps.redis, this.deps.store.keys, cell, request, {
        timeoutMs: this.deps.options.orderTimeoutMs,
        pollMs: this.deps.options.orderPollMs,
      });
    } catch {
      return undefined;
    }
  }
}

function primaryAddress(
  primary: InstanceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
): { host: string; port: number } | null {
  const a = cells.get(primary.cell)?.actual.get(primary.id);
  return a && a.port !== null ? { host: a.host, port: a.port } : null;
}
