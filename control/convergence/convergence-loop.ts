/**
 * The leader's loop: wakes on cell events (`sf:cell-events`), on service changes and on a poll
 * timer (a lost message only costs latency). It acts on change: the cells that reported and the
 * services that changed are read again, the rest of its view stays in memory, and a service whose
 * record and reports did not change since a reconcile that left it running is not reconciled
 * again. Every pass also reads again the reports of its share of the cells, so that every cell's
 * are read once per `resyncMs`, and reconciles whatever differs from what settled it: the safety
 * net for anything a lost message hid (the records need none: the store's version says when a
 * message was missed, and the store then reads them all). Every `recheckMs` a round looks at every
 * settled service once more, spread evenly over the period. No pass starts new reconciles past
 * `passBudgetMs` (the next pass goes on where it stopped), and what changed goes before the round,
 * services named by change messages first: a create does not wait behind the others (at 1,000
 * services a resync done in one pass held creates for seconds). A new term, the first pass, a
 * failed pass and a subscription that came back read everything at once and look at every
 * service. It does nothing while this control is a standby.
 */
import { type Redis } from 'ioredis';
import { createRedis, ErrorCode, isSfError, withDefaults } from '../../common';
import type { Logger } from 'pino';
import type { LeaderElector } from '../leader/leader-elector';
import type { CellDirectory } from '../services/cell-directory';
import type { ServiceSnapshot, ServiceStore } from '../services/service-store';
import type { OrphanCollector } from './orphan-collector';
import { isNewService, readyToRun, type ServiceReconciler } from './service-reconciler';
import type { StateKeeper } from './state-keeper';
import type { ServiceRecord } from '../services/service-types';
import type { CellSnapshot } from '../services/cell-directory';
import type { ActualInstance } from '../../protocol';

export interface ConvergenceLoopOptions {
  redisUrl: string;
  /** @default 1000 ms between passes without events */
  pollMs?: number;
  /** Events within this window share one pass. @default 25 */
  debounceMs?: number;
  /**
   * How long a new leader (a restarted control, a standby taking over) waits before it judges a
   * cell without a registration dead: cells of a restarted `sf up` register a few
   * seconds after control. Never less than twice the longest registration TTL a cell announced
   * (twice the default 3 s TTL while no cell has registered yet in this process).
   * @default 0 (the TTL rule alone)
   */
  cellGraceMs?: number;
  /**
   * Every cell's reports are read again at least this often, spread over the passes (each pass
   * reads its share besides the cells that reported), and the services whose inputs that changed
   * are looked at; deletions waiting for their cells and the collector run at least this often.
   * @default 30000
   */
  resyncMs?: number;
  /**
   * A pass starts no new reconcile after this long; what is left runs in the next pass, at once.
   * @default 50
   */
  passBudgetMs?: number;
  /**
   * Every service that stays settled is reconciled again at least this often anyway (its route
   * and desired spec rewritten if they drifted), spread evenly over the period. @default 300000
   */
  recheckMs?: number;
  logger: Logger;
  /** Called after every pass this control ran as leader (metrics). */
  onPass?: (seconds: number, ok: boolean) => void;
}

/** Services decided by one commit (ServiceReconciler.placeNew, runReady, tearDown) or rechecked by one read. */
const BATCH = 200;

/**
 * Work done for many services at once: first placements, the step from starting to running and
 * the steps of deletion (one commit each); the recheck round's look at settled services, and the
 * look at services that seem settled but were not reconciled in this term (one read of their
 * routes, nothing written).
 */
type BatchKind = 'place' | 'run' | 'delete' | 'recheck' | 'confirm';

/** The collector and the state copy get at most 1/COLLECT_SHARE of the leader's time. */
const COLLECT_SHARE = 10;

/** The cells' default registration TTL (`sf cell --heartbeat-ttl-ms`), when no cell has been seen yet. */
const DEFAULT_CELL_TTL_MS = 3_000;

export const DEFAULT_CONVERGENCE_LOOP_OPTIONS: Required<
  Pick<ConvergenceLoopOptions, 'pollMs' | 'debounceMs' | 'cellGraceMs' | 'resyncMs' | 'passBudgetMs' | 'recheckMs'>
> = {
  pollMs: 1_000,
  debounceMs: 25,
  cellGraceMs: 0,
  resyncMs: 30_000,
  passBudgetMs: 50,
  recheckMs: 300_000,
};

/**
 * The grace of one leadership term. No cell is judged dead while no cell at all has registered in
 * this term (a whole platform restarting: cells start seconds after control on a busy machine,
 * and with no live cell there is nothing to fail over to anyway), nor until `cellGraceMs` — at
 * least twice the longest registration TTL a cell announced — has passed since the later of the
 * term's first pass and the latest cell that registered while the grace was still open (agents
 * restarted together register seconds apart under load; found by the fault-schedule checker,
 * where a PostgreSQL replica whose agent came back 2 s after the others was replaced and sync
 * writes stalled 25 s for the new replica's base backup).
 */
export class CellGrace {
  private token = -1;
  private since = 0;
  /** When the latest cell came (back) alive in this term; null while none has. */
  private lastArrivalAt: number | null = null;
  private readonly arrived = new Set<string>();
  private longestTtlMs = 0;

  constructor(
    private readonly graceMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** True while cells missing in this term may still be coming back. */
  active(
    termToken: number,
    cells: Iterable<{ name: string; alive: boolean; record: { heartbeatTtlMs?: number } | null }>,
  ): boolean {
    const now = this.now();
    if (termToken !== this.token) {
      this.token = termToken;
      this.since = now;
      this.lastArrivalAt = null;
      this.arrived.clear();
    }
    const grace = (): number => Math.max(this.graceMs, 2 * (this.longestTtlMs || DEFAULT_CELL_TTL_MS));
    const open = this.lastArrivalAt === null || now - Math.max(this.since, this.lastArrivalAt) < grace();
    for (const c of cells) {
      this.longestTtlMs = Math.max(this.longestTtlMs, c.record?.heartbeatTtlMs ?? 0);
      // While the grace is open, every cell that registers restarts it: agents restarted together
      // come back seconds apart on a busy host, and the last one is no more dead than the first.
      if (c.alive && !this.arrived.has(c.name)) {
        this.arrived.add(c.name);
        if (open) this.lastArrivalAt = now;
      }
    }
    if (this.lastArrivalAt === null) return true;
    return now - Math.max(this.since, this.lastArrivalAt) < grace();
  }
}

export class ConvergenceLoop {
  private readonly opts: ConvergenceLoopOptions &
    Required<
      Pick<ConvergenceLoopOptions, 'pollMs' | 'debounceMs' | 'cellGraceMs' | 'resyncMs' | 'passBudgetMs' | 'recheckMs'>
    >;
  private readonly grace: CellGrace;
  private graceLogged = -1;
  private sub: Redis | null = null;
  private timer: NodeJS.Timeout | null = null;
  private pending: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  /** Completed passes, for tests and metrics. */
  passes = 0;
  /** Completed resync rounds (everything read and reconciled), and how long the last one took. */
  fullPasses = 0;
  lastFullPassMs = 0;
  /** Services reconciled by the last pass (the others were unchanged and left alone). */
  lastReconciled = 0;
  private lastFullAt = Number.NEGATIVE_INFINITY;
  /** When the last pass read the cells: each pass re-reads the reports of its share of them. */
  private lastViewAt = Date.now();
  private lastKeeperAt = Number.NEGATIVE_INFINITY;
  private lastServicesVersion = 0;
  private lastToken = -1;
  /** What each service's last reconcile saw, when it left the service running and unchanged. */
  private readonly settled = new Map<string, unknown[]>();
  /**
   * Services not settled but waiting for their cells' first reports (waitingForFirstReports),
   * with the inputs of the reconcile that found them so: skipped while those stay the same.
   */
  private readonly waiting = new Map<string, unknown[]>();
  /**
   * Services a batch (placeNew, runReady) left undecided or failed on, with the record it had
   * then: reconciled one by one while that record stays, so one that no batch can decide (its
   * router group gone, say) is not handed to a batch at every pass, nor holds up the others.
   */
  private readonly alone = new Map<string, ServiceRecord>();
  /** Services reconciled (or decided by a batch) in this term. */
  private readonly lookedAt = new Set<string>();
  /** Services named by change messages since they were last reconciled: first in every pass. */
  private readonly urgent = new Set<string>();
  /** The resync round under way: services it still owes a reconcile, in the order it pays them. */
  private round: { owed: Set<string>; size: number; startedAt: number } | null = null;
  private lastRoundAt = Number.NEGATIVE_INFINITY;
  private lastCollectAt = Number.NEGATIVE_INFINITY;
  /** When a pass last reconciled something. */
  private lastBusyAt = Number.NEGATIVE_INFINITY;
  /** Something was reconciled since the collector and the state copy last ran. */
  private collectPending = false;
  /** Least time between two runs of the collector and the copy while changes go on. */
  private collectEveryMs = 0;
  /**
   * Services a pass found changed (or owed) but did not reconcile before its budget ran out: the
   * next pass starts with them, so services needing work at every pass cannot starve the rest.
   */
  private carry = new Set<string>();
  /** The snapshot the last pass looked at, and what each cell was then (alive, reports object). */
  private lastSnapshot: ServiceSnapshot | null = null;
  private lastCells = new Map<string, { alive: boolean; actual: ReadonlyMap<string, ActualInstance> }>();
  private lastGrace: boolean | null = null;
  /** Services that are not settled (reconciled every pass): the pass's work besides what changed. */
  private readonly unsettled = new Set<string>();
  /** cell -> services with an instance on it, and each service's cells: to go from a cell to its services. */
  private readonly byCell = new Map<string, Set<string>>();
  private readonly cellsOfService = new Map<string, readonly string[]>();

  constructor(
    private readonly elector: LeaderElector,
    private readonly store: ServiceStore,
    private readonly directory: CellDirectory,
    private readonly reconciler: ServiceReconciler,
    options: ConvergenceLoopOptions,
    private readonly collector?: OrphanCollector,
    /** Control's own copy of its state, checked against the store before every pass. */
    private readonly keeper?: StateKeeper,
  ) {
    this.opts = withDefaults(DEFAULT_CONVERGENCE_LOOP_OPTIONS, options);
    this.grace = new CellGrace(this.opts.cellGraceMs);
  }

  async start(): Promise<void> {
    this.sub = createRedis(this.opts.redisUrl, {
      connectionName: 'sf-control:convergence',
      maxRetriesPerRequest: null,
    });
    this.sub.on('error', (err: Error) =>
      this.opts.logger.warn({ err: err.message }, 'convergence subscription problem'),
    );
    this.sub.on('message', (channel: string, message: string) => {
      if (channel === this.store.keys.servicesChanged) this.serviceChanged(message);
      else this.directory.markDirty(cellOfEvent(message));
      this.kick();
    });
    // Messages published while the subscription was down are lost: read everything again.
    this.sub.on('ready', () => {
      this.lastFullAt = Number.NEGATIVE_INFINITY;
    });
    await this.sub.subscribe(this.store.keys.cellEvents, this.store.keys.servicesChanged);
    this.timer = setInterval(() => this.kick(0), this.opts.pollMs);
    this.kick(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.pending) clearTimeout(this.pending);
    await this.running;
    this.sub?.disconnect();
    this.sub = null;
  }

  /**
   * A message of `sf:services:changed` (`VERSION NAME`): the store's cache learns the name, and
   * the service goes first in the next pass.
   */
  serviceChanged(message: string): void {
    this.store.noteChanged(message);
    const space = message.indexOf(' ');
    const name = space < 0 ? '' : message.slice(space + 1);
    if (name && name !== '*') this.urgent.add(name);
  }

  /** Asks for a pass soon; passes never overlap, and one requested during a pass runs after it. */
  kick(delayMs = this.opts.debounceMs): void {
    if (this.stopped || this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      if (this.running) {
        this.again = true;
        return;
      }
      this.running = this.pass().finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
    }, delayMs);
  }

  /**
   * One pass (exported for tests that step the loop by hand): a full one — everything read,
   * every service reconciled — every `resyncMs`, else one over what changed.
   */
  /** Names whose records changed since the last pass's snapshot; null when unknown (any may have). */
  private changedSince(snapshot: ServiceSnapshot): Set<string> | null {
    if (!this.lastSnapshot) return null;
    const store = this.store as Partial<Pick<ServiceStore, 'changedBetween'>>;
    return store.changedBetween?.(this.lastSnapshot, snapshot) ?? null;
  }

  /**
   * The services a pass looks at, in order: named by messages, carried over, then the rest.
   * `changed` null means every service (and the cell index is rebuilt); otherwise only the
   * services `changed` names, those on cells whose liveness or reports changed since the last
   * pass, those not settled, and up to `quota` of those the round owes.
   */
  private candidates(
    services: ReadonlyMap<string, ServiceRecord>,
    cells: ReadonlyMap<string, CellSnapshot>,
    changed: Set<string> | null,
    round: { owed: Set<string> } | null,
    quota: number,
  ): Iterable<string> {
    const first = [...this.urgent, ...this.carry];
    if (changed === null) {
      this.byCell.clear();
      this.cellsOfService.clear();
      this.unsettled.clear();
      for (const name of this.settled.keys()) if (!services.has(name)) this.settled.delete(name);
      for (const [name, record] of services) {
        this.index(name, record);
        if (!this.settled.has(name)) this.unsettled.add(name);
      }
      return [...first, ...services.keys()];
    }
    const look = new Set<string>(first);
    for (const name of changed) {
      const record = services.get(name);
      if (!record) {
        this.forget(name);
        continue;
      }
      this.index(name, record);
      if (!this.settled.has(name)) this.unsettled.add(name);
      look.add(name);
    }
    for (const [name, cell] of cells) {
      const before = this.lastCells.get(name);
      if (before && before.alive === cell.alive && before.actual === cell.actual) continue;
      for (const service of this.byCell.get(name) ?? []) look.add(service);
    }
    for (const [name] of this.lastCells)
      if (!cells.has(name)) for (const service of this.byCell.get(name) ?? []) look.add(service);
    for (const name of this.unsettled) look.add(name);
    if (round) {
      let n = 0;
      for (const name of round.owed) {
        if (n++ >= quota) break;
        look.add(name);
      }
    }
    return look;
  }

  /** Keeps the cell index of one service up to date with its record. */
  private index(name: string, record: ServiceRecord): void {
    const before = this.cellsOfService.get(name);
    const now = [...new Set(record.instances.map((i) => i.cell))];
    if (before && before.length === now.length && before.every((c, i) => c === now[i])) return;
    for (const cell of before ?? []) this.byCell.get(cell)?.delete(name);
    for (const cell of now) {
      let set = this.byCell.get(cell);
      if (!set) this.byCell.set(cell, (set = new Set()));
      set.add(name);
    }
    this.cellsOfService.set(name, now);
  }

  /** A service that no longer exists leaves every index. */
  private forget(name: string): void {
    for (const cell of this.cellsOfService.get(name) ?? []) this.byCell.get(cell)?.delete(name);
    this.cellsOfService.delete(name);
    this.lookedAt.delete(name);
    this.settled.delete(name);
    this.waiting.delete(name);
    this.alone.delete(name);
    this.unsettled.delete(name);
    this.urgent.delete(name);
    this.carry.delete(name);
  }

  private settle(name: string, inputs: unknown[]): void {
    this.settled.set(name, inputs);
    this.unsettled.delete(name);
  }

  private unsettle(name: string): void {
    this.settled.delete(name);
    this.waiting.delete(name);
    this.unsettled.add(name);
  }

  async pass(): Promise<void> {
    const fence = this.elector.current();
    if (!fence) return;
    const started = Date.now();
    // Everything is read and looked at again in a new term (another leader may have acted in
    // between), at the first pass, after a failed pass and when the subscription came back
    // (messages may have been lost). The periodic resync is spread instead: every pass reads
    // again the reports of its share of the cells (all of them once per `resyncMs`), and only
    // services whose inputs changed are looked at. Done at once, it held every create and every
    // failover that came during it for the whole of it (at 10,000 services over 1,000 cells,
    // 10,000 reports read and 10,000 services' inputs compared, in one pass every 30 s).
    const full = this.lastFullAt === Number.NEGATIVE_INFINITY || fence.token !== this.lastToken;
    const resync = full || started - this.lastFullAt >= this.opts.resyncMs;
    const share = Math.min(1, Math.max(0, started - this.lastViewAt) / this.opts.resyncMs);
    this.lastViewAt = started;
    // What was settled in an earlier term says nothing about what the leaders since then did.
    if (fence.token !== this.lastToken) {
      this.settled.clear();
      this.waiting.clear();
      this.alone.clear();
      this.round = null;
      this.carry.clear();
      // Heard while standing by: the term looks at everything anyway, and what the messages
      // named is no more urgent than the rest.
      this.urgent.clear();
      this.lookedAt.clear();
    }
    this.lastToken = fence.token;
    const startedPerf = performance.now();
    let ok = false;
    try {
      const { version } = await this.store.snapshot();
      // Never converge on a store that lost data: that would stop engines and empty routes. The
      // copy is compared at the poll cadence, and at once when the services version went back.
      if (
        this.keeper &&
        (resync || version < this.lastServicesVersion || started - this.lastKeeperAt >= this.opts.pollMs)
      ) {
        this.lastKeeperAt = started;
        if (await this.keeper.restoreIfLost()) {
          this.lastFullAt = Number.NEGATIVE_INFINITY;
          await this.elector.resign();
          this.kick(0);
          return;
        }
      }
      this.lastServicesVersion = version;
      const cells = full ? await this.directory.snapshot() : await this.directory.view(share);
      if (resync) this.lastFullAt = started;
      const cellGrace = this.grace.active(fence.token, cells.values());
      if (cellGrace && this.graceLogged !== fence.token) {
        this.graceLogged = fence.token;
        const missing = [...cells.values()].filter((c) => !c.alive).map((c) => c.name);
        this.opts.logger.info(
          { token: fence.token, missing },
          'new leadership term: no cell is judged dead until the cell grace has passed',
        );
      }
      const snapshot = await this.store.snapshot();
      const { services } = snapshot;
      // A new term reconciles everything anyway (nothing is settled in it). The round of settled
      // services starts every `recheckMs` and is paid evenly over it.
      if (this.round === null && resync && started - this.lastRoundAt >= this.opts.recheckMs) {
        this.lastRoundAt = started;
        this.round = { owed: new Set(services.keys()), size: services.size, startedAt: started };
      }
      const round = this.round;
      let roundQuota = 0;
      if (round) {
        const due = Math.ceil((round.size * (started - round.startedAt + this.opts.pollMs)) / this.opts.recheckMs);
        roundQuota = Math.max(0, Math.min(round.size, due) - (round.size - round.owed.size));
      }
      // Which services to look at: all of them on a resync, a new term, a grace that changed or
      // records changed in ways this pass cannot name; else only those named by a change, on a
      // cell whose liveness or reports changed, not settled, carried over, or owed by the round.
      const names = full || cellGrace !== this.lastGrace ? null : this.changedSince(snapshot);
      const look = this.candidates(services, cells, names, round, roundQuota);
      this.lastSnapshot = snapshot;
      this.lastGrace = cellGrace;
      this.lastCells = new Map([...cells].map(([name, c]) => [name, { alive: c.alive, actual: c.actual }]));
      // First what changed (named by a message, or whose inputs differ from what settled it),
      // carried-over work before the rest; then what the round owes, within what is left of the budget.
      const changed: Array<[string, ServiceRecord]> = [];
      const owed: Array<[string, ServiceRecord]> = [];
      const seen = new Set<string>();
      // A service's inputs are taken only when something compares or keeps them: a new term's
      // passes each went over 10,000 unsettled services, building every one's inputs, to reconcile
      // the few the budget allowed (the same record and cells give the same inputs all pass long).
      const taken = new Map<string, unknown[]>();
      const inputsOf = (name: string, record: ServiceRecord): unknown[] => {
        let inputs = taken.get(name);
        if (!inputs) taken.set(name, (inputs = reconcileInputs(record, cells, cellGrace)));
        return inputs;
      };
      for (const name of look) {
        if (seen.has(name)) continue;
        seen.add(name);
        const record = services.get(name);
        if (!record) {
          this.forget(name);
          round?.owed.delete(name);
          continue;
        }
        const owedNow = owed.length < roundQuota && round?.owed.has(name) === true;
        const settledOn = this.settled.get(name);
        if (this.urgent.has(name) || settledOn === undefined || !sameInputs(settledOn, inputsOf(name, record))) {
          const waitingOn = this.waiting.get(name);
          // Waiting for its cells' first reports with the very inputs of a reconcile that found
          // it so: that reconcile changed nothing, and this one would not either.
          // A deletion waiting for its cells likewise, except on a resync: its wait for the cells
          // has a time limit (deleteGraceMs), which no input shows.
          if (
            !this.urgent.has(name) &&
            !owedNow &&
            !(resync && record.status === 'deleting') &&
            waitingOn !== undefined &&
            sameObjects(waitingOn, inputsOf(name, record))
          )
            continue;
          changed.push([name, record]);
        } else if (owedNow) owed.push([name, record]);
      }
      // Every other pass, services that ran before go first (a failover must not wait behind a
      // burst of new services starting); the passes between keep the order found, so that
      // services always needing work (degraded ones) cannot starve the new ones either.
      const established = (r: ServiceRecord): boolean => r.status === 'running' || r.status === 'degraded';
      const work =
        this.passes % 2 === 0
          ? [...changed.filter(([, r]) => established(r)), ...changed.filter(([, r]) => !established(r)), ...owed]
          : [...changed, ...owed];
      this.carry = new Set(work.map(([name]) => name));
      let reconciled = 0;
      let cut = false;
      const budgetFrom = performance.now();
      const take = (name: string): void => {
        this.lookedAt.add(name);
        this.carry.delete(name);
        this.unsettle(name);
        this.urgent.delete(name);
        round?.owed.delete(name);
        reconciled++;
      };
      // New services are placed, and starting services whose instances all run are marked
      // running, many to a commit: a batch goes where its first member stands in the order (so
      // established services still go first every other pass), and takes up to BATCH of its kind
      // from the rest of the work. Everything else is reconciled one by one.
      const owedNames = new Set(owed.map(([name]) => name));
      // A term's first look at a service that seems settled confirms it with others, unless a
      // change message named it (its record changed: more likely to need a write than not). A new
      // leader of 10,000 services otherwise reconciled each, a few round trips apiece, for a minute.
      const kinds = work.map(([name, record]): BatchKind | null =>
        this.alone.get(name) === record
          ? null
          : owedNames.has(name)
            ? 'recheck'
            : (batchKind(record, cells) ??
              (!this.lookedAt.has(name) && !this.urgent.has(name) && settledService(record, cells) ? 'confirm' : null)),
      );
      const ofKind: Record<BatchKind, string[]> = { place: [], run: [], delete: [], recheck: [], confirm: [] };
      work.forEach(([name], i) => {
        const kind = kinds[i];
        if (kind) ofKind[kind].push(name);
      });
      const next: Record<BatchKind, number> = { place: 0, run: 0, delete: 0, recheck: 0, confirm: 0 };
      const batched = new Set<string>();
      for (let i = 0; i < work.length; i++) {
        const [name, record] = work[i] as [string, ServiceRecord];
        if (batched.has(name)) continue;
        if (this.elector.current()?.token !== fence.token) return;
        if (reconciled > 0 && performance.now() - budgetFrom > this.opts.passBudgetMs) {
          cut = true;
          break;
        }
        const kind = kinds[i];
        if (kind) {
          const batch = ofKind[kind].slice(next[kind], next[kind] + BATCH);
          next[kind] += batch.length;
          for (const n of batch) batched.add(n);
          batch.forEach(take);
          try {
            let decided: ReadonlySet<string>;
            if (kind === 'place') decided = await this.reconciler.placeNew(batch, fence, cells, { cellGrace });
            else if (kind === 'run') decided = await this.reconciler.runReady(batch, fence, cells, { cellGrace });
            else if (kind === 'recheck')
              decided = await this.reconciler.recheck(
                batch.map((n) => services.get(n) as ServiceRecord),
                cells,
              );
            else if (kind === 'confirm')
              decided = await this.reconciler.confirm(
                batch.map((n) => services.get(n) as ServiceRecord),
                fence,
                cells,
                { cellGrace },
              );
            else {
              const torn = await this.reconciler.tearDown(batch, fence, cells);
              decided = torn.decided;
              // Waiting for their cells to report the instances stopped: nothing to do while
              // their inputs stay the same (a resync looks again, for the grace that runs out).
              for (const n of torn.idle) this.waiting.set(n, inputsOf(n, services.get(n) as ServiceRecord));
            }
            // A settled service found as it should be stays settled, on the inputs that settled it;
            // one confirmed is settled on the inputs it was confirmed with.
            if (kind === 'recheck' || kind === 'confirm')
              for (const n of batch) if (decided.has(n)) this.settle(n, inputsOf(n, services.get(n) as ServiceRecord));
            // Changed since the snapshot (deleted, placed by an earlier term, no longer ready):
            // reconciled one by one in the next pass.
            for (const n of batch) {
              if (decided.has(n)) continue;
              this.carry.add(n);
              this.alone.set(n, services.get(n) as ServiceRecord);
            }
          } catch (err) {
            if (isSfError(err) && err.code === ErrorCode.StaleLeader) {
              this.opts.logger.warn({ err: err.message }, 'a newer leader exists; standing down');
              await this.elector.tick();
              return;
            }
            this.opts.logger.warn(
              { services: batch.length, err: (err as Error).message },
              kind === 'place'
                ? 'placement of new services failed'
                : kind === 'run'
                  ? 'marking started services running failed'
                  : kind === 'delete'
                    ? 'deletion of services failed'
                    : kind === 'confirm'
                      ? 'confirming services that seem settled failed'
                      : 'recheck of settled services failed',
            );
            // One by one next time: a service that fails alone no longer holds up the others.
            for (const n of batch) {
              this.carry.add(n);
              this.alone.set(n, services.get(n) as ServiceRecord);
            }
          }
          continue;
        }
        take(name);
        try {
          await this.reconciler.reconcile(name, fence, cells, { cellGrace });
          if (settledService(record, cells)) this.settle(name, inputsOf(name, record));
          else if (waitingForFirstReports(record, cells)) this.waiting.set(name, inputsOf(name, record));
        } catch (err) {
          if (isSfError(err) && err.code === ErrorCode.StaleLeader) {
            this.opts.logger.warn({ err: err.message }, 'a newer leader exists; standing down');
            await this.elector.tick();
            return;
          }
          this.opts.logger.warn({ service: name, err: (err as Error).message }, 'convergence of a service failed');
        }
      }
      this.lastReconciled = reconciled;
      // What the budget left runs in the next pass, right after this one.
      if (cut) this.again = true;
      if (round && round.owed.size === 0) {
        this.round = null;
        this.fullPasses++;
        this.lastFullPassMs = Date.now() - round.startedAt;
      }
      // The collector and the copy look at everything (O(N)): only when something was reconciled
      // or at a resync, and once the leader has had nothing to reconcile for a poll period, so
      // that they never hold a create or a failover that comes while changes go on (at 10,000
      // services they took tens of milliseconds, every second during a stream of creates); while
      // changes never stop, at least once per resync period.
      if (reconciled > 0) {
        this.collectPending = true;
        this.lastBusyAt = started;
      }
      if (resync) this.collectPending = true;
      const quiet = reconciled === 0 && started - this.lastBusyAt >= this.opts.pollMs;
      if (
        this.collectPending &&
        ((quiet && started - this.lastCollectAt >= this.collectEveryMs) ||
          started - this.lastCollectAt >= this.opts.resyncMs)
      ) {
        this.collectPending = false;
        this.lastCollectAt = started;
        const collectFrom = performance.now();
        await this.collector?.collect(fence, cells, (await this.store.snapshot()).services.values());
        await this.keeper?.saveIfChanged();
        // Both read the whole state (the copy writes it to a file too): O(N). While changes keep
        // coming they take at most a tenth of the leader's time, not one run per second (at
        // 10,000 services that starved placement: creates were scheduled at 6 a second).
        this.collectEveryMs = Math.max(this.opts.pollMs, COLLECT_SHARE * (performance.now() - collectFrom));
      }
      this.passes++;
      ok = true;
    } catch (err) {
      if (full) this.lastFullAt = Number.NEGATIVE_INFINITY;
      this.opts.logger.warn({ err: (err as Error).message }, 'convergence pass failed');
    } finally {
      this.opts.onPass?.((performance.now() - startedPerf) / 1000, ok);
    }
  }
}

/** The cell an `sf:cell-events` message is about ('' when it is not a cell event). */
function cellOfEvent(message: string): string {
  try {
    const event = JSON.parse(message) as { cell?: unknown };
    return typeof event.cell === 'string' ? event.cell : '';
  } catch {
    return '';
  }
}

/**
 * Everything a reconcile of this service reads that can change without a new record: the
 * record itself (a new object whenever it changed), the grace, and per instance whether its cell
 * is alive and its report (a new object whenever its text changed).
 */
function reconcileInputs(
  record: ServiceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
  cellGrace: boolean,
): unknown[] {
  const out: unknown[] = [record, cellGrace];
  for (const inst of record.instances) {
    const cell = cells.get(inst.cell);
    out.push(cell?.alive === true, cell?.actual.get(inst.id));
  }
  return out;
}

/** The record (first) by identity: a changed record is a new object. Reports by what the reconciler reads. */
function sameInputs(a: unknown[] | undefined, b: unknown[]): boolean {
  return a !== undefined && a.length === b.length && a.every((v, i) => v === b[i] || (i > 0 && sameReport(v, b[i])));
}

/**
 * Two reports that differ only in what the reconciler does not read (the time of the report, the
 * replication position, the pid) count as the same: a cell that re-reports them is no change.
 */
function sameReport(a: unknown, b: unknown): boolean {
  if (!a || !b || typeof a !== 'object' || typeof b !== 'object') return false;
  const x = a as ActualInstance;
  const y = b as ActualInstance;
  return (
    x.state === y.state &&
    x.generation === y.generation &&
    x.host === y.host &&
    x.port === y.port &&
    x.role === y.role &&
    x.epoch === y.epoch &&
    x.healthy === y.healthy &&
    x.leaseHeld === y.leaseHeld &&
    (x.degraded ?? null) === (y.degraded ?? null) &&
    x.lastError?.code === y.lastError?.code &&
    x.lastError?.message === y.lastError?.message
  );
}

/**
 * A service that needs nothing while its inputs stay as they are: running, every instance's
 * spec written, its cell alive, its report running, healthy, holding its lease, not fenced.
 * Anything else (a failover in progress, a restart backoff, a deletion) is reconciled every pass.
 */
function settledService(record: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): boolean {
  if (record.status !== 'running') return false;
  return record.instances.every((inst) => {
    const cell = cells.get(inst.cell);
    const actual = cell?.actual.get(inst.id);
    return (
      cell?.alive === true &&
      inst.specWritten &&
      !inst.fenced &&
      actual !== undefined &&
      actual.state === 'running' &&
      actual.generation >= inst.generation &&
      actual.healthy !== false &&
      actual.leaseHeld !== false &&
      !actual.degraded
    );
  });
}

/** Whether a service's next step is one `placeNew`, `runReady` or `tearDown` decides for many at once. */
function batchKind(record: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): BatchKind | null {
  if (isNewService(record)) return 'place';
  if (record.status === 'deleting') return 'delete';
  if (record.status === 'starting' && readyToRun(record, cells)) return 'run';
  return null;
}

/** Both input lists hold the very same values (reports compared by identity, not content). */
function sameObjects(a: unknown[] | undefined, b: unknown[]): boolean {
  return a !== undefined && a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * A placed service whose cells have reported none of its instances yet, all on live cells and
 * none fenced: a reconcile has nothing to do (no report to act on, no failover, no restart, no
 * route) until a report, a cell's liveness or the record changes — all of which are inputs.
 */
function waitingForFirstReports(record: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): boolean {
  if (record.status !== 'starting' || record.message) return false;
  if (record.instances.filter((i) => !i.moveOf).length !== record.replicas + 1) return false;
  return record.instances.every((inst) => {
    const cell = cells.get(inst.cell);
    return (
      cell?.alive === true &&
      !inst.fenced &&
      !inst.moveOf &&
      cell.actual.get(inst.id) === undefined &&
      (inst.role !== 'primary' || inst.specWritten)
    );
  });
}
