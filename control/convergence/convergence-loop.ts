/**
 * The leader's loop: wakes on cell events (`sf:cell-events`), on service changes and on a poll
 * timer (a lost message only costs latency), and runs the reconciler over every service. It does
 * nothing while this control is a standby.
 */
import { type Redis } from 'ioredis';
import { createRedis, ErrorCode, isSfError, withDefaults } from '../../common';
import type { Logger } from 'pino';
import type { LeaderElector } from '../leader/leader-elector';
import type { CellDirectory } from '../services/cell-directory';
import type { ServiceStore } from '../services/service-store';
import type { OrphanCollector } from './orphan-collector';
import type { ServiceReconciler } from './service-reconciler';
import type { StateKeeper } from './state-keeper';

export interface ConvergenceLoopOptions {
  redisUrl: string;
  /** @default 1000 ms between passes without events */
  pollMs?: number;
  /** Events within this window share one pass. @default 25 */
  debounceMs?: number;
  /**
   * How long a new leader (a restarted control, a standby taking over) waits before it judges a
   * cell without a registration dead (issue 10): cells of a restarted `sf up` register a few
   * seconds after control. Never less than twice the longest registration TTL a cell announced
   * (twice the default 3 s TTL while no cell has registered yet in this process).
   * @default 0 (the TTL rule alone)
   */
  cellGraceMs?: number;
  logger: Logger;
  /** Called after every pass this control ran as leader (metrics). */
  onPass?: (seconds: number, ok: boolean) => void;
}

/** The cells' default registration TTL (`sf cell --heartbeat-ttl-ms`), when no cell has been seen yet. */
const DEFAULT_CELL_TTL_MS = 3_000;

export const DEFAULT_CONVERGENCE_LOOP_OPTIONS: Required<
  Pick<ConvergenceLoopOptions, 'pollMs' | 'debounceMs' | 'cellGraceMs'>
> = {
  pollMs: 1_000,
  debounceMs: 25,
  cellGraceMs: 0,
};

/**
 * The grace of one leadership term. No cell is judged dead while no cell at all has registered in
 * this term (a whole platform restarting: cells start seconds after control on a busy machine,
 * and with no live cell there is nothing to fail over to anyway), nor until `cellGraceMs` — at
 * least twice the longest registration TTL a cell announced — has passed since the later of the
 * term's first pass and the first live cell it saw.
 */
export class CellGrace {
  private token = -1;
  private since = 0;
  private firstAliveAt: number | null = null;
  private longestTtlMs = 0;

  constructor(
    private readonly graceMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** True while cells missing in this term may still be coming back. */
  active(termToken: number, cells: Iterable<{ alive: boolean; record: { heartbeatTtlMs?: number } | null }>): boolean {
    const now = this.now();
    if (termToken !== this.token) {
      this.token = termToken;
      this.since = now;
      this.firstAliveAt = null;
    }
    for (const c of cells) {
      this.longestTtlMs = Math.max(this.longestTtlMs, c.record?.heartbeatTtlMs ?? 0);
      if (c.alive) this.firstAliveAt ??= now;
    }
    if (this.firstAliveAt === null) return true;
    const grace = Math.max(this.graceMs, 2 * (this.longestTtlMs || DEFAULT_CELL_TTL_MS));
    return now - Math.max(this.since, this.firstAliveAt) < grace;
  }
}

export class ConvergenceLoop {
  private readonly opts: ConvergenceLoopOptions &
    Required<Pick<ConvergenceLoopOptions, 'pollMs' | 'debounceMs' | 'cellGraceMs'>>;
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

  constructor(
    private readonly elector: LeaderElector,
    private readonly store: ServiceStore,
    private readonly directory: CellDirectory,
    private readonly reconciler: ServiceReconciler,
    options: ConvergenceLoopOptions,
    private readonly collector?: OrphanCollector,
    /** Control's own copy of its state, checked against the store before every pass (issue 10). */
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
    this.sub.on('message', () => this.kick());
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

  /** One pass over every service (exported for tests that step the loop by hand). */
  async pass(): Promise<void> {
    const fence = this.elector.current();
    if (!fence) return;
    const started = performance.now();
    let ok = false;
    try {
      if (this.keeper) {
        // Never converge on a store that lost data: that would stop engines and empty routes.
        if (await this.keeper.restoreIfLost()) {
          await this.elector.resign();
          this.kick(0);
          return;
        }
      }
      const cells = await this.directory.snapshot();
      const cellGrace = this.grace.active(fence.token, cells.values());
      if (cellGrace && this.graceLogged !== fence.token) {
        this.graceLogged = fence.token;
        const missing = [...cells.values()].filter((c) => !c.alive).map((c) => c.name);
        this.opts.logger.info(
          { token: fence.token, missing },
          'new leadership term: no cell is judged dead until the cell grace has passed',
        );
      }
      const { services } = await this.store.snapshot();
      for (const name of services.keys()) {
        if (this.elector.current()?.token !== fence.token) return;
        try {
          await this.reconciler.reconcile(name, fence, cells, { cellGrace });
        } catch (err) {
          if (isSfError(err) && err.code === ErrorCode.StaleLeader) {
            this.opts.logger.warn({ err: err.message }, 'a newer leader exists; standing down');
            await this.elector.tick();
            return;
          }
          this.opts.logger.warn({ service: name, err: (err as Error).message }, 'convergence of a service failed');
        }
      }
      await this.collector?.collect(fence, cells, (await this.store.snapshot()).services.values());
      await this.keeper?.saveIfChanged();
      this.passes++;
      ok = true;
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'convergence pass failed');
    } finally {
      this.opts.onPass?.((performance.now() - started) / 1000, ok);
    }
  }
}
