/**
 * The fencing sequence, one method per phase, each step recorded in the fencing
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
 * The effects go through the parts of fencing-steps.ts, so unit tests drive this class
 * with fakes and prove the order; the record logic stays here. A step that throws stops the
 * sequence where it is: nothing after it runs, and the record says how far it got. Every record
 * write carries the leader fence, so a deposed leader stops at its next write.
 */
import type { KeyLayout, HostPort, OrderResult } from '../../protocol';
import { putDesiredOps, removeDesiredOps } from '../state/cell-client';
import type { LeaderFence } from '../leader/fenced-commit';
import { instanceSpec } from '../services/instance-spec';
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceChange } from '../services/service-store';
import type { InstanceRecord, ServiceRecord } from '../services/service-types';
import type { CasOp } from '../state/cas-commit';
import { ErrorCode, SfError, errorCodeOf, errorMessageOf, isSfError } from '../../common';
import type { FailoverOptions } from './failover-options';
import type { FencingStep, FencingStepInput } from './fencing-history';
import type { CellView, FencingSteps } from './fencing-steps';
import { eligibleReplicas } from './action-validation';
import { chooseReplica, type Candidate } from './replica-choice';

/** The service records as the sequence needs them (ServiceStore). */
export interface ServiceRecords {
  readonly keys: KeyLayout;
  mustGet(name: string): Promise<ServiceRecord>;
  change<T>(
    name: string,
    fence: LeaderFence | null,
    decide: (current: ServiceRecord | null) => Promise<{ change: ServiceChange; result: T } | { done: T }>,
  ): Promise<T>;
}

/** Where steps are recorded (FencingHistory). */
export interface StepRecorder {
  record(
    fence: LeaderFence,
    op: { operation: string; trigger: string; service: string },
    input: FencingStepInput,
  ): Promise<FencingStep>;
}

export interface FencingDeps {
  store: ServiceRecords;
  directory: CellView;
  steps: FencingSteps;
  options: Required<FailoverOptions>;
}

/** One fencing operation: its id, trigger and leader fence, and the steps it recorded. */
export class FencingOperation {
  readonly steps: FencingStep[] = [];
  /** When the operation started, then when its last step was recorded (step durations). */
  private last = Date.now();

  constructor(
    readonly id: string,
    readonly service: string,
    readonly trigger: string,
    readonly fence: LeaderFence,
    private readonly history: StepRecorder,
  ) {}

  async record(input: FencingStepInput): Promise<void> {
    const now = Date.now();
    const durationMs = now - this.last;
    this.last = now;
    this.steps.push(
      await this.history.record(
        this.fence,
        { operation: this.id, trigger: this.trigger, service: this.service },
        { durationMs, ...input },
      ),
    );
  }
}

const LOOPBACK = /^(127\.|::1$|localhost$)/;

export interface SwitchoverOptions {
  /**
   * Wait for the old primary to run as a replica of the new one before reporting. A volume move
   * removes the old primary right after, so it does not wait. @default true
   */
  awaitRejoin?: boolean;
  /**
   * The old primary leaves the service instead of rejoining as a replica (a volume move: the new
   * primary replaces it). It is taken out of the record and its cell's desired hash in the same
   * commit that promotes the new primary, with the store ops this returns (a tombstone for its
   * volume), so its cell stops it and nothing restarts it.
   */
  retire?: (record: ServiceRecord, old: InstanceRecord) => CasOp[];
  /**
   * A primary that does not answer for its position before anything is touched is failed over
   * (fenced, shot, the best replica promoted), as an operator's `sf failover` expects. A volume
   * move says false: its source may well be alive on a loaded machine, and shooting it would
   * lose what its replica had not received; the switchover is refused instead (the move tries
   * again). @default true
   */
  failoverIfSilent?: boolean;
}

/** What `promote` did: the record afterwards and the old primary's new generation when it rejoins. */
interface Promotion {
  record: ServiceRecord;
  chosen: Candidate;
  address: HostPort;
  /** Set when the old primary was turned into a replica that restarts at this generation. */
  oldRejoinsAt?: number;
}

export class FencingSequence {
  constructor(private readonly deps: FencingDeps) {}

  /** Steps 1-3 for the service's current primary; idempotent, resumes a half-done fence. */
  async fencePrimary(op: FencingOperation): Promise<ServiceRecord> {
    const { store, steps } = this.deps;
    // Step 1: the epoch grows and the primary is marked fenced in the record, which is what the
    // route emitter renders; a new leader sees the mark and resumes.
    const { marked, primary, epoch, cells } = await this.fenceRoute(
      op,
      true,
      (p, e, version) => `epoch ${p.epoch} -> ${e}; backend ${p.id} published fenced in table version ${version}`,
    );

    // Step 2: shoot, then the lease floor (which also covers a cell that never got the order).
    const cell = cells.get(primary.cell);
    const shoot = async (late: string): Promise<void> => {
      const res = await steps.shoot.shoot(primary.cell, primary.id);
      await op.record({
        step: 'shoot',
        outcome: res?.ok ? 'ok' : 'degraded',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: res?.ok
          ? `SIGKILL by cell ${primary.cell} (was running: ${String(res.data?.wasRunning)})${late}`
          : `cell ${primary.cell} did not confirm the fence order: ${res?.error?.message ?? 'no answer in time'}`,
      });
    };
    if (cell?.alive) {
      await shoot('');
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
    await this.raiseFloor(op, primary, epoch, ': no renewal or primary start below it');
    // A cell that registered again between the snapshot above and the floor passed its
    // heartbeat's floor check, so it would keep its deposed primary running until the rejoin
    // (seen after a restart at load: both instances claimed primary for seconds). Once the floor
    // is up, a cell that comes back later is refused by its heartbeat and shoots on its own; one
    // that came back before it is shot now.
    if (!cell?.alive && (await this.deps.directory.snapshot([primary.cell])).get(primary.cell)?.alive)
      await shoot(`; the cell came back before the lease floor was raised`);

    // Step 3: the network fence needs the fenced cell to act in its own network.
    const peers = this.networkPeers(primary.cell, cells);
    let networkPeers: string[] | undefined;
    const skip = (message: string) =>
      op.record({
        step: 'network-fence',
        outcome: 'skipped',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message,
      });
    const sharing = this.cellsSharingNetwork(primary.cell, cells);
    if (!cell?.record || LOOPBACK.test(cell.record.host)) {
      await skip(`cell ${primary.cell} shares the host's loopback network; no separate network to cut`);
    } else if (sharing.length > 0) {
      // A fence installed in a network other cells share would cut them off too (found by the
      // fault-schedule checker: a prohibit route set on a shared host cut a third cell off for good).
      await skip(
        `cell ${primary.cell} shares its address ${cell.record.host} with ${sharing.join(', ')}; a network fence would cut them too`,
      );
    } else if (peers.length === 0) {
      await skip(`cell ${primary.cell} has no peers on other addresses to cut it from`);
    } else if (!cell.alive) {
      await skip(
        `cell ${primary.cell} is unreachable, so it cannot install the fence (it is partitioned already); route fence and lease floor hold`,
      );
    } else {
      const res = await steps.networkFence.cut(primary.cell, peers);
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
   * repoints the other replicas, turns the old primary into a replica when its cell is alive
   * (a new generation: it restarts with `replicaof` / as a standby, pg_rewind when needed), and
   * publishes the route.
   */
  async promote(op: FencingOperation, target?: string): Promise<ServiceRecord> {
    try {
      return (await this.promoteReplica(op, target, false)).record;
    } catch (err) {
      if (target !== undefined || errorCodeOf(err) !== ErrorCode.NoPromotionCandidate) throw err;
      const restarted = await this.restartInPlace(op, errorMessageOf(err));
      if (!restarted) throw err;
      return restarted;
    }
  }

  /**
   * No replica can be promoted (its base backup never finished, it failed, it is on a dead cell)
   * and the fenced primary's cell is alive: the old primary is the only copy of the data, so it is
   * restarted where it is, as the primary with the new epoch (its floor allows exactly that). No
   * other instance was promoted, so this brings back no second writer, and every write it
   * acknowledged is on its volume. Without this, a primary SIGKILL during a replica's first base
   * backup left the service without any writer until an operator deleted it.
   */
  private async restartInPlace(op: FencingOperation, why: string): Promise<ServiceRecord | null> {
    const rec = await this.deps.store.mustGet(op.service);
    const primary = rec.instances.find((i) => i.role === 'primary');
    const cells = await this.deps.directory.snapshot(cellsOf(rec));
    if (!primary?.fenced || !cells.get(primary.cell)?.alive) return null;
    const after = await this.restorePrimary(op, primary, rec.epoch, true);
    await op.record({
      step: 'restart-in-place',
      outcome: after ? 'ok' : 'failed',
      instanceId: primary.id,
      cell: primary.cell,
      epoch: rec.epoch,
      message: after
        ? `${why}: ${primary.id} restarts in place as the primary with epoch ${rec.epoch} (it holds every acknowledged write)`
        : `${why}: ${primary.id} could not be restarted (the service changed)`,
    });
    return after;
  }

  /**
   * The old primary serves again with `epoch`, unfenced and published; `restart` gives it a new
   * generation, so its cell starts it again (it was stopped or shot).
   */
  private async restorePrimary(
    op: FencingOperation,
    primary: InstanceRecord,
    epoch: number,
    restart: boolean,
  ): Promise<ServiceRecord | null> {
    const after = await this.deps.store.change<ServiceRecord | null>(op.service, op.fence, async (cur) => {
      if (!cur) return { done: null };
      const next = editableCopy(cur, op);
      const ops: CasOp[] = [];
      for (const inst of next.instances) {
        if (inst.id !== primary.id || inst.role !== 'primary') continue;
        delete inst.fenced;
        inst.epoch = epoch;
        if (restart) {
          inst.generation += 1;
          inst.restartedAt = Date.now();
        }
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
    if (after)
      await this.deps.steps.routeFence.publish(after, await this.deps.directory.snapshot(cellsOf(after)), op.fence);
    return after;
  }

  /**
   * Planned switchover of a healthy primary without data loss and without two writers: route
   * fence (routers acknowledged), raise the lease floor, stop the old primary
   * taking writes, wait until the target reached its position, promote the target, publish, and
   * only then report: after the old primary runs as a replica of the new one (unless it retires)
   * and, with sync durability, the new primary committed a write its standby acknowledged.
   *
   * The old primary stops taking writes before the new one is promoted, so that at no moment two
   * instances accept writes, even from clients that bypass the router. An engine that can pause
   * writes (Redis `CLIENT PAUSE WRITE`) is paused: its position freezes at once and it keeps
   * running, so no shutdown sits between the route fence and the new route; it is restarted as a
   * replica (or removed) after the new primary is published. An engine that cannot pause
   * (PostgreSQL) is stopped cleanly as soon as the routers let go of it and its floor is raised,
   * and the position its stop reports (read from its data directory) is the catch-up's goal: it
   * covers every write it took, also from clients that bypass the router. A pause that got no
   * answer leads to a stop after the catch-up, as before.
   */
  async switchover(op: FencingOperation, target?: string, how: SwitchoverOptions = {}): Promise<ServiceRecord> {
    const { steps, options } = this.deps;
    // The old primary's writes are paused while the routers let go of it: the catch-up needs
    // both, neither needs the other, and the pause takes a round trip to its cell. It starts once
    // the record says a switchover runs, so a control that stops here leaves a record the next
    // leader resumes from (it fences the old primary) rather than a paused primary nobody knows
    // of. An engine that cannot pause is stopped only once the routers let go of it and its floor
    // is raised: stopped earlier, its shutdown had to end the sessions of clients still writing
    // through the routers, and measured no faster (docs/benchmarks.md, volume-move).
    let halting: Promise<Halt> | null = null;
    let stopSent = false;
    // Resolved true once the stop may be sent (routers acknowledged, floor raised, a target
    // chosen), false when the switchover ends before that: a refused one must not stop anything.
    let release: (go: boolean) => void = () => undefined;
    const mayStop = new Promise<boolean>((resolve) => (release = resolve));
    const { marked, primary, epoch, cells } = await this.fenceRoute(
      op,
      false,
      (p, e, version) =>
        `writes paused: ${p.id} published fenced in table version ${version} (epoch ${p.epoch} -> ${e})`,
      (p) => {
        if (options.pauseWritesMs <= 0) return;
        halting = steps.rejoin
          .pauseWrites(p.cell, p.id, options.pauseWritesMs)
          .catch(() => undefined)
          .then(async (paused): Promise<Halt> => {
            if (paused?.ok || paused?.error?.code !== ErrorCode.EngineUnsupported) return { paused };
            if (!(await mayStop)) return { paused };
            // Sent means maybe stopped: from here an abandoned switchover restarts the old primary.
            stopSent = true;
            return { paused, stopped: await steps.rejoin.stop(p.cell, p.id).catch(() => undefined) };
          });
      },
    );
    await this.raiseFloor(op, primary, epoch, '');

    let promotion: Promotion;
    try {
      const candidates = await this.candidates(marked, cells, target);
      const chosen = chooseReplica(candidates);
      if (!chosen)
        throw new SfError(ErrorCode.NoPromotionCandidate, `service ${op.service} has no running replica to switch to`);
      release(true);
      const pause = await this.recordPause(op, primary, epoch, halting);
      const goal = pause.goal ?? (await steps.promote.position(primary.cell, primary.id));
      if (goal === null) throw new SfError(ErrorCode.OrderFailed, `could not read the position of ${primary.id}`);
      const t0 = Date.now();
      // The bound counts from the last progress: a target that advances (slowly, on a loaded
      // machine) is waited for, one that stands still for the whole bound is given up.
      let best: bigint | null = null;
      let progressAt = t0;
      for (;;) {
        const pos = await steps.promote.position(chosen.cell, chosen.instanceId);
        if (pos !== null && pos >= goal) break;
        if (pos !== null && (best === null || pos > best)) {
          if (best !== null) progressAt = Date.now();
          best = pos;
        }
        if (Date.now() - progressAt > options.catchUpTimeoutMs) {
          throw new SfError(
            ErrorCode.CatchUpTimeout,
            `${chosen.instanceId} reached ${String(pos)} of ${goal} and made no progress for ${options.catchUpTimeoutMs} ms`,
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
      // A paused primary still calls itself primary: promoting the target now would make two
      // (neither could commit, but an engine's own view is what clients and tools trust). It
      // follows the target first, as Redis's own FAILOVER does; the two follow each other until
      // the promotion, with nothing to exchange, since the target caught up with the pause.
      // Without an answer it is stopped instead, as an engine that cannot pause is.
      if (pause.paused && !(await this.demotePaused(op, primary, chosen, cells, epoch))) pause.paused = false;
      if (!pause.paused && !pause.stopped) {
        stopSent = true;
        const stopped = await steps.rejoin.stop(primary.cell, primary.id);
        await this.recordStop(op, primary, epoch, stopped, { promoted: chosen.instanceId, needPosition: false });
      }
      promotion = await this.promoteReplica(op, chosen.instanceId, true, how.retire);
    } catch (err) {
      release(false);
      const promotedMaybe = isSfError(err) && err.code === ErrorCode.OrderTimeout;
      await this.abortSwitchover(op, primary, epoch, (err as Error).message, stopSent, promotedMaybe);
      throw err;
    }

    // Not done until the old primary really is a replica: a config change alone left two
    // writable primaries.
    if (promotion.oldRejoinsAt !== undefined && how.awaitRejoin !== false) {
      const rejoined = await steps.rejoin.awaitReplica(
        primary.cell,
        primary.id,
        promotion.oldRejoinsAt,
        options.rejoinTimeoutMs,
      );
      await op.record({
        step: 'rejoin',
        outcome: rejoined.ok ? 'ok' : 'degraded',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: rejoined.ok
          ? `${rejoined.message}, following ${promotion.chosen.instanceId}`
          : `${rejoined.message}; the reconciler restarts it as a replica`,
      });
    }
    if (promotion.record.durability === 'sync' && promotion.record.replicas > 0)
      await this.confirmCommit(op, promotion, epoch);
    return promotion.record;
  }

  /**
   * The old primary of a switchover stops taking client writes while it keeps running and feeding
   * its replicas; `goal` is its position afterwards, which no acknowledged write is beyond. Not
   * paused (the engine cannot, or the cell did not answer): the caller stops it after the
   * catch-up. A pause that got no answer may still happen; the stop (or, when the switchover is
   * abandoned, the `promote` that confirms the old primary, which lifts a pause) comes after it on
   * the instance's order chain.
   */
  /** Points the paused old primary at the switchover's target; false when that did not happen. */
  private async demotePaused(
    op: FencingOperation,
    primary: InstanceRecord,
    target: { instanceId: string; cell: string },
    cells: ReadonlyMap<string, CellSnapshot>,
    epoch: number,
  ): Promise<boolean> {
    const address = instanceAddress({ cell: target.cell, id: target.instanceId }, cells);
    const res = address ? await this.deps.steps.rejoin.repoint(primary.cell, primary.id, address) : undefined;
    await op.record({
      step: 'repoint',
      outcome: res?.ok ? 'ok' : 'degraded',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: res?.ok
        ? `${primary.id} follows ${target.instanceId} before it is promoted: never two primaries`
        : `${primary.id} did not follow ${target.instanceId} (${res?.error?.message ?? 'no answer in time'}); it is stopped before the promotion`,
    });
    return res?.ok === true;
  }

  private async recordPause(
    op: FencingOperation,
    primary: InstanceRecord,
    epoch: number,
    halting: Promise<Halt> | null,
  ): Promise<{ paused: boolean; stopped: boolean; goal: bigint | null }> {
    const { options } = this.deps;
    if (!halting) return { paused: false, stopped: false, goal: null };
    const { paused: res, stopped } = await halting;
    const value = res?.ok ? res.data?.positionValue : undefined;
    const goal = positionOf(value);
    await op.record({
      step: 'pause',
      outcome: res?.ok ? 'ok' : res?.error?.code === ErrorCode.EngineUnsupported ? 'skipped' : 'degraded',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: res?.ok
        ? `${primary.id} takes no client writes (paused for up to ${options.pauseWritesMs} ms) at position ${value ?? '?'}; it is stopped after the new primary is published`
        : `${primary.id} not paused (${res?.error?.message ?? 'no answer in time'}); it is stopped ${
            res?.error?.code === ErrorCode.EngineUnsupported ? 'now' : 'after the catch-up'
          }`,
    });
    if (res?.ok || res?.error?.code !== ErrorCode.EngineUnsupported)
      return { paused: res?.ok === true, stopped: false, goal };
    // Stopped at once: a clean stop leaves every acknowledged write below the position it reports
    // (the server's last checkpoint, written at the shutdown); without one the target cannot be
    // shown to hold everything, and the switchover is abandoned (the old primary restarted).
    const stopGoal = await this.recordStop(op, primary, epoch, stopped, { promoted: 'the target', needPosition: true });
    return { paused: false, stopped: true, goal: stopGoal };
  }

  /**
   * Records the old primary's clean stop, or throws when it did not stop (or stopped without the
   * position a catch-up needs as its goal). Returns the position it reported, if any.
   */
  private async recordStop(
    op: FencingOperation,
    primary: InstanceRecord,
    epoch: number,
    stopped: OrderResult | undefined,
    how: { promoted: string; needPosition: boolean },
  ): Promise<bigint | null> {
    const value = stopped?.ok ? stopped.data?.positionValue : undefined;
    const position = positionOf(value);
    if (!stopped?.ok || (how.needPosition && position === null))
      throw new SfError(
        ErrorCode.OrderFailed,
        stopped?.ok
          ? `the old primary ${primary.id} stopped without reporting its position`
          : `the old primary ${primary.id} did not stop: ${stopped?.error?.message ?? 'no answer in time'}`,
      );
    const at = how.needPosition ? ` at position ${value ?? '?'}` : '';
    await op.record({
      step: 'stop',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `${primary.id} stopped cleanly${at}; no writer until ${how.promoted} is promoted`,
    });
    return position;
  }

  /**
   * Lifts a network fence and lets a fenced instance rejoin as a replica when another primary
   * exists; a fenced instance that is still the primary stays fenced (promote first).
   */
  async unfence(op: FencingOperation): Promise<ServiceRecord> {
    const { steps } = this.deps;
    const rec = await this.deps.store.mustGet(op.service);
    const cells = await this.deps.directory.snapshot(cellsOf(rec));
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
        const res = alive ? await steps.networkFence.lift(inst.cell, inst.fenced.networkPeers) : undefined;
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
    const address = instanceAddress(primary, cells);
    const after = await this.deps.store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      if (!cur) return { done: rec };
      const next = editableCopy(cur, op);
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
    await steps.routeFence.publish(after, await this.deps.directory.snapshot(cellsOf(after)), op.fence);
    return after;
  }

  /**
   * Marks the primary fenced with the next epoch. `resume`: a primary marked already keeps its
   * mark (a new leader resumes a half-done fence); a switchover always takes a fresh epoch.
   */
  private markFenced(op: FencingOperation, resume: boolean): Promise<ServiceRecord> {
    const at = Date.now();
    return this.deps.store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      if (!cur) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} no longer exists`);
      const primary = cur.instances.find((i) => i.role === 'primary');
      if (!primary) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} has no primary`);
      if (resume && primary.fenced) return { done: cur };
      const epoch = cur.epoch + 1;
      const next: ServiceRecord = {
        ...cur,
        epoch,
        // Status tells the truth: from the route fence until the reconciler judges the
        // new primary, no write goes through; the reconciler leaves a service alone while its
        // failover runs, so without this the record kept saying `running` all along.
        status: 'degraded',
        message: resume
          ? `primary ${primary.id} fenced (${op.trigger}) at epoch ${epoch}: failing over, writes paused`
          : `switchover from ${primary.id} at epoch ${epoch}: writes paused until the new primary is published`,
        leaderToken: op.fence.token,
        updatedAt: at,
        instances: cur.instances.map((i) =>
          i.id === primary.id ? { ...i, fenced: { epoch, at, trigger: op.trigger, complete: false } } : i,
        ),
      };
      return { change: { record: next }, result: next };
    });
  }

  /**
   * Step 1 of every sequence: the epoch grows and the primary is marked fenced in the record
   * (`shoot` says whether it is to be killed or only paused for a switchover), the route emitter
   * publishes it, and every live router acknowledges before anything else happens.
   */
  private async fenceRoute(
    op: FencingOperation,
    shoot: boolean,
    describe: (primary: InstanceRecord, epoch: number, version: number) => string,
    onMarked?: (primary: InstanceRecord) => void,
  ): Promise<{ marked: ServiceRecord; primary: InstanceRecord; epoch: number; cells: Map<string, CellSnapshot> }> {
    const marked = await this.markFenced(op, shoot);
    const primary = marked.instances.find((i) => i.role === 'primary') as InstanceRecord;
    onMarked?.(primary);
    const epoch = shoot ? (primary.fenced?.epoch ?? marked.epoch) : marked.epoch;
    const cells = await this.deps.directory.snapshot(cellsOf(marked));
    const version = await this.deps.steps.routeFence.publish(marked, cells, op.fence);
    await op.record({
      step: 'route-fence',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: describe(primary, epoch, version),
    });
    await this.awaitRouters(op, marked, version, epoch);
    return { marked, primary, epoch, cells };
  }

  private async raiseFloor(op: FencingOperation, primary: InstanceRecord, epoch: number, why: string): Promise<void> {
    const floor = await this.deps.steps.leaseFloor.raise(primary.id, epoch);
    await op.record({
      step: 'lease-floor',
      outcome: 'ok',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `lease floor of ${primary.id} is ${floor}${why}`,
    });
  }

  private async promoteReplica(
    op: FencingOperation,
    target: string | undefined,
    planned: boolean,
    retire?: SwitchoverOptions['retire'],
  ): Promise<Promotion> {
    const { steps } = this.deps;
    const rec = await this.deps.store.mustGet(op.service);
    const old = rec.instances.find((i) => i.role === 'primary');
    const epoch = rec.epoch;
    const cells = await this.deps.directory.snapshot(cellsOf(rec));
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

    const res = await steps.promote.promote(chosen.cell, chosen.instanceId, epoch);
    if (!res?.ok) {
      await op.record({
        step: 'promote',
        outcome: 'failed',
        instanceId: chosen.instanceId,
        cell: chosen.cell,
        epoch,
        message: res?.error?.message ?? 'no answer in time',
      });
      // No answer means the promotion may have happened: callers must not bring the old
      // primary back then (two writers); a refusal means it did not.
      throw new SfError(
        res ? ErrorCode.OrderFailed : ErrorCode.OrderTimeout,
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

    // The old primary rejoins below as a replica of the new one. A network fence on its cell
    // would keep it, and every other instance there, from its peers for good (found by the fault
    // checker: both services' replicas on that cell stopped replicating). The old primary was
    // shot before the promotion, so the fence has done its work: it is lifted first.
    const oldPeers = old?.fenced?.networkPeers;
    if (old && oldPeers?.length && cells.get(old.cell)?.alive) {
      const lifted = await steps.networkFence.lift(old.cell, oldPeers);
      await op.record({
        step: 'unfence',
        outcome: lifted?.ok ? 'ok' : 'degraded',
        instanceId: old.id,
        cell: old.cell,
        epoch,
        message: lifted?.ok
          ? `network fence of cell ${old.cell} lifted: ${old.id} rejoins as a replica`
          : `cell ${old.cell} could not lift its network fence (${lifted?.error?.message ?? 'no answer in time'}); sf unfence ${op.service} retries`,
      });
    }

    // Replicas follow the new primary now; a failed repoint leaves `upstream` unchanged, so the
    // reconciler retries it.
    const followers = rec.instances.filter(
      (i) => i.id !== chosen.instanceId && i.role === 'replica' && !i.fenced && cells.get(i.cell)?.alive,
    );
    const repointed = new Set<string>();
    await Promise.all(
      followers.map(async (f) => {
        const r = await steps.rejoin.repoint(f.cell, f.id, address);
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

    let oldRejoinsAt: number | undefined;
    const after = await this.deps.store.change<ServiceRecord>(op.service, op.fence, async (cur) => {
      if (!cur) throw new SfError(ErrorCode.NoPrimary, `service ${op.service} no longer exists`);
      const next = editableCopy(cur, op);
      const ops: CasOp[] = [];
      oldRejoinsAt = undefined;
      if (retire && old && next.instances.some((i) => i.id === old.id)) {
        next.instances = next.instances.filter((i) => i.id !== old.id);
        ops.push(...removeDesiredOps(this.deps.store.keys, old.cell, old.id), ...retire(next, old));
      }
      for (const inst of next.instances) {
        if (inst.id === chosen.instanceId) {
          inst.role = 'primary';
          inst.epoch = epoch;
          delete inst.upstream;
          delete inst.fenced;
          // A replica built to replace another (a move) is a full member once it is the primary.
          delete inst.moveOf;
          ops.push(
            ...putDesiredOps(
              this.deps.store.keys,
              inst.cell,
              instanceSpec(next, inst, null, this.deps.options.primaryLeaseTtlMs),
            ),
          );
        } else if (old && inst.id === old.id) {
          inst.role = 'replica';
          if (cells.get(inst.cell)?.alive) {
            // A replica carries the epoch of the primary it follows (as a newly placed one does);
            // keeping the deposed primary's would show it as if it still held the old term.
            inst.epoch = epoch;
            // Killed (failover) or stopped (switchover) on a live cell: a new generation restarts
            // it as a replica of the new primary (PostgreSQL rewinds it first when it diverged),
            // never as a primary with an old epoch.
            inst.generation += 1;
            inst.restartedAt = Date.now();
            inst.upstream = address;
            delete inst.fenced;
            oldRejoinsAt = inst.generation;
            ops.push(...putDesiredOps(this.deps.store.keys, inst.cell, instanceSpec(next, inst, address)));
          }
          // On a dead cell it stays a fenced replica: the reconciler replaces it on a live cell.
        } else if (repointed.has(inst.id)) {
          inst.upstream = address;
          inst.epoch = epoch;
          ops.push(...putDesiredOps(this.deps.store.keys, inst.cell, instanceSpec(next, inst, address)));
        }
      }
      return { change: { record: next, extraOps: ops }, result: next };
    });
    if (old && !planned && !retire) {
      await op.record({
        step: 'rejoin',
        outcome: oldRejoinsAt !== undefined ? 'ok' : 'skipped',
        instanceId: old.id,
        cell: old.cell,
        epoch,
        message:
          oldRejoinsAt !== undefined
            ? `${old.id} restarts as a replica of ${chosen.instanceId}`
            : `${old.id} stays fenced (cell ${old.cell} not alive); a replacement replica is placed`,
      });
    }
    const version = await steps.routeFence.publish(after, await this.deps.directory.snapshot(cellsOf(after)), op.fence);
    await op.record({
      step: 'publish',
      outcome: 'ok',
      instanceId: chosen.instanceId,
      cell: chosen.cell,
      epoch,
      message: `route to ${chosen.instanceId} (${address.host}:${address.port}, epoch ${epoch}) in table version ${version}`,
    });
    // Recorded after the route is out: the record is history, not a step writes wait for.
    if (old && retire) {
      await op.record({
        step: 'retire',
        outcome: 'ok',
        instanceId: old.id,
        cell: old.cell,
        epoch,
        message: `${old.id} leaves the service: ${chosen.instanceId} replaces it; cell ${old.cell} stops it`,
      });
    }
    return { record: after, chosen, address, oldRejoinsAt };
  }

  /**
   * With sync durability a switchover is complete only when the new primary can commit, i.e. a
   * standby acknowledges; otherwise it is recorded degraded with the reason (the cell's commit
   * check keeps the service `degraded` until then).
   */
  private async confirmCommit(op: FencingOperation, promotion: Promotion, epoch: number): Promise<void> {
    const { steps, options } = this.deps;
    const { chosen } = promotion;
    const deadline = Date.now() + options.rejoinTimeoutMs;
    let message: string;
    for (;;) {
      const res = await steps.rejoin.commitCheck(chosen.cell, chosen.instanceId, options.commitCheckTimeoutMs);
      if (res?.ok) {
        await op.record({
          step: 'commit-check',
          outcome: 'ok',
          instanceId: chosen.instanceId,
          cell: chosen.cell,
          epoch,
          message: `${chosen.instanceId} committed a write acknowledged by a standby`,
        });
        return;
      }
      message = res?.error?.message ?? 'no answer in time';
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await op.record({
      step: 'commit-check',
      outcome: 'degraded',
      instanceId: chosen.instanceId,
      cell: chosen.cell,
      epoch,
      message: `${chosen.instanceId} cannot commit with sync durability: ${message}; the service is degraded until a standby acknowledges`,
    });
  }

  /**
   * The old primary keeps its role, with the new epoch (its floor was raised to it). Running, it is
   * re-confirmed by a `promote` order; when a stop order was sent it may be down, so a new
   * generation restarts it as the primary.
   */
  private async abortSwitchover(
    op: FencingOperation,
    primary: InstanceRecord,
    epoch: number,
    why: string,
    stopSent: boolean,
    promotedMaybe: boolean,
  ): Promise<void> {
    const { steps } = this.deps;
    if (promotedMaybe) {
      // The target may be primary now: the old one stays fenced and stopped, and the
      // coordinator finishes the failover (promote is idempotent) on its next pass.
      await op.record({
        step: 'abort',
        outcome: 'failed',
        instanceId: primary.id,
        cell: primary.cell,
        epoch,
        message: `switchover interrupted (${why}); ${primary.id} stays fenced, the failover is completed by the next pass`,
      });
      return;
    }
    const res = stopSent ? undefined : await steps.promote.promote(primary.cell, primary.id, epoch);
    const restore = stopSent || res?.ok === true;
    if (restore) await this.restorePrimary(op, primary, epoch, stopSent);
    await op.record({
      step: 'abort',
      outcome: restore ? 'ok' : 'failed',
      instanceId: primary.id,
      cell: primary.cell,
      epoch,
      message: `switchover abandoned (${why}); ${
        restore
          ? `${primary.id} serves again with epoch ${epoch}${stopSent ? ' once restarted' : ''}`
          : `${primary.id} stays fenced: ${res?.error?.message ?? 'no answer'}`
      }`,
    });
  }

  private async awaitRouters(op: FencingOperation, rec: ServiceRecord, version: number, epoch: number): Promise<void> {
    const ack = await this.deps.steps.routeFence.awaitRouters(rec, version);
    if (!ack) return;
    await op.record({
      step: 'router-ack',
      outcome: ack.ok ? 'ok' : 'degraded',
      epoch,
      message: ack.ok
        ? `${ack.routers} live router(s) applied version ${version} in ${ack.waitedMs} ms`
        : `router(s) ${ack.lagging.join(', ')} did not apply version ${version} within ${ack.waitedMs} ms; continuing`,
    });
  }

  private async candidates(
    rec: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    target?: string,
  ): Promise<Candidate[]> {
    const eligible = eligibleReplicas(rec, cells, target);
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
        // A named target is the one choice: its position is read where it matters (a
        // switchover's catch-up), not here, where it would only cost an order round trip.
        const fresh = target === undefined ? await this.deps.steps.promote.position(i.cell, i.id) : null;
        return {
          instanceId: i.id,
          cell: i.cell,
          positionValue:
            fresh !== null ? fresh.toString() : (cells.get(i.cell)?.actual.get(i.id)?.positionValue ?? null),
        };
      }),
    );
  }

  /** Other cells that advertise the fenced cell's own address: they share its network. */
  private cellsSharingNetwork(cellName: string, cells: ReadonlyMap<string, CellSnapshot>): string[] {
    const own = cells.get(cellName)?.record?.host;
    if (!own) return [];
    return [...cells.values()]
      .filter((c) => c.name !== cellName && c.record?.host === own)
      .map((c) => c.name)
      .sort();
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
}

/** How the old primary of a switchover stopped taking writes: its pause, else its clean stop. */
interface Halt {
  paused: OrderResult | undefined;
  /** Sent only when the engine cannot pause. */
  stopped?: OrderResult | undefined;
}

function positionOf(value: unknown): bigint | null {
  return typeof value === 'string' && /^\d+$/.test(value) ? BigInt(value) : null;
}

/** Where an instance's cell last reported it listening; null while it reports no port. */
function instanceAddress(
  instance: Pick<InstanceRecord, 'cell' | 'id'>,
  cells: ReadonlyMap<string, CellSnapshot>,
): HostPort | null {
  const a = cells.get(instance.cell)?.actual.get(instance.id);
  return a && a.port !== null ? { host: a.host, port: a.port } : null;
}

/** A copy of the record, stamped with this term, whose instances may be changed in place. */
function editableCopy(cur: ServiceRecord, op: FencingOperation): ServiceRecord {
  return {
    ...cur,
    leaderToken: op.fence.token,
    updatedAt: Date.now(),
    instances: cur.instances.map((i) => ({ ...i })),
  };
}

/**
 * The cells whose reports a step reads: the service's own (every cell's registration is read
 * anyway, for liveness and the network peers).
 */
function cellsOf(rec: ServiceRecord): string[] {
  return [...new Set(rec.instances.map((i) => i.cell))];
}
