/**
 * The FailoverCoordinator, plugged into the reconciler as the default: a lost primary
 * (engine failed, cell expired, lease lost) is fenced at once (steps 1-3 of FencingSequence),
 * then promotion follows at once under `fencing.policy: auto`, or waits for an operator's
 * `failover` under `manual`. It also serves the operator actions (fence, unfence, failover).
 *
 * The reconciler calls `primaryLost` on every pass while the primary stays lost, so the work runs
 * in the background, one operation per service at a time, and the reconciler is told to keep its
 * hands off (`handling`). Progress lives in the service record (InstanceRecord.fenced), so a new
 * leader resumes where the old one stopped.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { FailoverCoordinator, FailoverOutcome, PrimaryLoss } from '../services/failover-coordinator';
import type { LeaderElector } from '../leader/leader-elector';
import type { LeaderFence } from '../leader/fenced-commit';
import { readLease } from '../../protocol';
import { withDefaults, ErrorCode, SfError } from '../../common';
import type { ServiceRecord } from '../services/service-types';
import { DEFAULT_FAILOVER_OPTIONS, type FailoverOptions } from './failover-options';
import { FencingHistory, type FencingStep } from './fencing-history';
import { FencingOperation, FencingSequence, type StepRecorder, type SwitchoverOptions } from './fencing-sequence';
import { cellFencingSteps, type FencingSteps } from './fencing-steps';
import { LeaderAddressBook, type LeaderAddress } from './leader-address';
import { planAction, type ActionPlan, type FencingAction } from './action-validation';
import type { Redis } from 'ioredis';
import type { RouteEmitter } from '../services/route-emitter';
import type { CellDirectory } from '../services/cell-directory';
import type { ServiceStore } from '../services/service-store';
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';

export interface FencingCoordinatorDeps {
  redis: Redis;
  store: ServiceStore;
  directory: CellDirectory;
  emitter: RouteEmitter;
  groups: RouterGroupStore;
  routes: TcpRouteStore;
  logger: Logger;
  /** Replaces the real steps (unit tests drive the coordinator with fakes). @default cellFencingSteps */
  steps?: FencingSteps;
  /** Replaces the Redis-backed history (unit tests). @default FencingHistory */
  history?: FencingHistoryLike;
}

/** The history as the coordinator and the API use it. */
export type FencingHistoryLike = StepRecorder & Pick<FencingHistory, 'list'>;

/** What an operator action returns: the steps it recorded and the record afterwards. */
export interface FencingActionResult {
  operation: string;
  service: ServiceRecord;
  steps: FencingStep[];
}

export type { FencingAction };

export class FencingFailoverCoordinator implements FailoverCoordinator {
  readonly history: FencingHistoryLike;
  private readonly sequence: FencingSequence;
  private readonly steps: FencingSteps;
  private readonly options: Required<FailoverOptions>;
  private readonly inflight = new Map<string, Promise<unknown>>();
  private readonly failedAt = new Map<string, { at: number; message: string }>();
  /** instanceId -> when its lease was first seen missing, for the grace period. */
  private readonly leaseMissingSince = new Map<string, number>();
  private elector: LeaderElector | undefined;
  /** Where the leader's API answers, published while this control leads. */
  private readonly addresses: LeaderAddressBook;

  constructor(
    private readonly deps: FencingCoordinatorDeps,
    options: FailoverOptions = {},
  ) {
    this.options = withDefaults(DEFAULT_FAILOVER_OPTIONS, options);
    this.history = deps.history ?? new FencingHistory(deps.redis, deps.store.keys, this.options.historyLimit);
    const steps =
      deps.steps ??
      cellFencingSteps({
        redis: deps.redis,
        keys: deps.store.keys,
        directory: deps.directory,
        emitter: deps.emitter,
        groups: deps.groups,
        routes: deps.routes,
        options: this.options,
      });
    this.addresses = new LeaderAddressBook(deps.redis, deps.store.keys, () => this.elector?.current() ?? null);
    this.steps = steps;
    this.sequence = new FencingSequence({ store: deps.store, directory: deps.directory, steps, options: this.options });
  }

  /** Publishes `url` as the leader's API address whenever this control leads. */
  advertise(url: string): void {
    this.addresses.advertise(url);
  }

  stopAdvertising(): void {
    this.addresses.stop();
  }

  isLeader(): boolean {
    return this.elector?.current() != null;
  }

  /** The current leader's API address (null when unknown), for forwarding actions to it. */
  leaderAddress(): Promise<LeaderAddress | null> {
    return this.addresses.lookup();
  }

  /** The elector is created after the coordinator (it is part of the reconciler's wiring). */
  attach(elector: LeaderElector): void {
    this.elector = elector;
  }

  async primaryLost(loss: PrimaryLoss): Promise<FailoverOutcome> {
    const { service, primary, reason } = loss;
    if (this.inflight.has(service.name)) return { kind: 'handling' };
    if (reason === 'lease-lost' && !(await this.leaseExpired(primary.id, primary.epoch))) return { kind: 'healthy' };
    this.leaseMissingSince.delete(primary.id);
    // A replica a move is building is no promotion candidate (action-validation.ts).
    const hasReplica = service.instances.some((i) => i.role === 'replica' && !i.moveOf);
    if (!hasReplica && !primary.fenced) {
      return {
        kind: 'degraded',
        message: `primary ${primary.id} is lost (${describe(reason, primary.cell)}); the service has no replica to promote`,
      };
    }
    if (primary.fenced?.complete && service.fencing.policy === 'manual') {
      return {
        kind: 'degraded',
        message: `primary ${primary.id} is fenced (epoch ${primary.fenced.epoch}); fencing.policy is manual: promote with 'sf failover ${service.name}'`,
      };
    }
    const failed = this.failedAt.get(service.name);
    if (failed && Date.now() - failed.at < this.options.retryBackoffMs)
      return { kind: 'degraded', message: failed.message };

    const trigger = primary.fenced?.trigger ?? reason;
    const op = new FencingOperation(randomUUID(), service.name, trigger, loss.fence, this.history);
    const auto = service.fencing.policy === 'auto';
    this.track(service.name, async () => {
      if (!primary.fenced?.complete) await this.sequence.fencePrimary(op);
      if (auto) await this.sequence.promote(op);
    });
    return { kind: 'handling' };
  }

  /**
   * Operator actions; they run on the leader only and wait for the operation to finish.
   * the action is validated on fresh state (planAction) before anything is fenced, floored or
   * published, so a refused action leaves no trace but its 4xx error.
   */
  async act(
    action: FencingAction,
    name: string,
    target?: string,
    options: SwitchoverOptions = {},
  ): Promise<FencingActionResult> {
    const fence = this.leaderFence();
    let plan: ActionPlan;
    let silentPrimary = false;
    for (;;) {
      // An automatic operation may be running: let it finish, then judge the outcome.
      await this.inflight.get(name)?.catch(() => undefined);
      const rec = await this.deps.store.mustGet(name);
      plan = planAction(action, rec, await this.deps.directory.snapshot(), target);
      // A primary killed a moment ago looks running until its cell reports it, and a switchover
      // would fence its route and only then find it cannot read its position. Asked before
      // anything is touched, a primary that does not answer is handled as a lost one: fenced
      // (shot, floored), then the best replica promoted, which is what the operator asked for.
      silentPrimary =
        plan.kind === 'switchover' && (await this.steps.promote.position(plan.primary.cell, plan.primary.id)) === null;
      if (silentPrimary && options.failoverIfSilent === false)
        throw new SfError(
          ErrorCode.OrderFailed,
          `${plan.kind === 'switchover' ? plan.primary.id : 'the primary'} did not answer for its position; nothing was touched`,
        );
      if (silentPrimary && plan.kind === 'switchover')
        plan = { kind: 'failover', primary: plan.primary, ...(plan.target ? { target: plan.target } : {}) };
      // No await between this check and track(): nothing can start in between.
      if (!this.inflight.has(name)) break;
    }
    const trigger =
      plan.kind === 'fence'
        ? 'operator-fence'
        : plan.kind === 'unfence'
          ? 'operator-unfence'
          : plan.kind === 'switchover'
            ? 'switchover'
            : 'operator-failover';
    const op = new FencingOperation(randomUUID(), name, trigger, fence, this.history);
    const chosen = plan;
    const service = await this.track(
      name,
      async () => {
        if (silentPrimary && chosen.kind === 'failover')
          await op.record({
            step: 'check',
            outcome: 'failed',
            instanceId: chosen.primary.id,
            cell: chosen.primary.cell,
            epoch: chosen.primary.epoch,
            message: `${chosen.primary.id} did not answer for its position: no switchover from a primary that may be dead; failing over instead`,
          });
        return this.run(op, chosen, options);
      },
      true,
    );
    return { operation: op.id, service, steps: op.steps };
  }

  private async run(op: FencingOperation, plan: ActionPlan, options: SwitchoverOptions): Promise<ServiceRecord> {
    switch (plan.kind) {
      case 'unfence':
        return this.sequence.unfence(op);
      case 'fence': {
        const fenced = await this.sequence.fencePrimary(op);
        return plan.promote ? this.sequence.promote(op) : fenced;
      }
      case 'promote':
        if (!plan.primary.fenced?.complete) await this.sequence.fencePrimary(op);
        return this.sequence.promote(op, plan.target);
      case 'failover':
        await this.sequence.fencePrimary(op);
        return this.sequence.promote(op, plan.target);
      case 'switchover':
        return this.sequence.switchover(op, plan.target, options);
    }
  }

  private leaderFence(): LeaderFence {
    const fence = this.elector?.current();
    if (!fence)
      throw new SfError(
        ErrorCode.NotLeader,
        'this control is not the leader; fencing actions run on the leader (see GET /v3/leader)',
      );
    return fence;
  }

  /** Runs one operation per service; failures are logged and retried after the backoff. */
  private track<T>(name: string, work: () => Promise<T>, rethrow = false): Promise<T> {
    const run = (async () => {
      try {
        const out = await work();
        this.failedAt.delete(name);
        return out;
      } catch (err) {
        const message = `failover of ${name} did not complete: ${(err as Error).message}`;
        this.failedAt.set(name, { at: Date.now(), message });
        this.deps.logger.warn({ service: name, err: (err as Error).message }, 'fencing operation failed');
        throw err;
      } finally {
        this.inflight.delete(name);
      }
    })();
    this.inflight.set(name, run);
    if (!rethrow) run.catch(() => undefined);
    return run;
  }

  /** A lease gap counts only when it outlasts the grace period and no lease with our epoch exists. */
  private async leaseExpired(instanceId: string, epoch: number): Promise<boolean> {
    const lease = await readLease(this.deps.redis, this.deps.store.keys, instanceId);
    if (lease && lease.epoch >= epoch) {
      this.leaseMissingSince.delete(instanceId);
      return false;
    }
    const since = this.leaseMissingSince.get(instanceId) ?? Date.now();
    this.leaseMissingSince.set(instanceId, since);
    return Date.now() - since >= this.options.leaseGraceMs;
  }
}

function describe(reason: PrimaryLoss['reason'], cell: string): string {
  switch (reason) {
    case 'cell-dead':
      return `its cell ${cell} stopped heartbeating`;
    case 'instance-failed':
      return `it failed on cell ${cell}`;
    case 'lease-lost':
      return 'its lease expired';
    case 'fenced':
      return 'it was fenced';
  }
}
