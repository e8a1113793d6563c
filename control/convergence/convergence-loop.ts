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

export interface ConvergenceLoopOptions {
  redisUrl: string;
  /** @default 1000 ms between passes without events */
  pollMs?: number;
  /** Events within this window share one pass. @default 25 */
  debounceMs?: number;
  logger: Logger;
}

export const DEFAULT_CONVERGENCE_LOOP_OPTIONS: Required<Pick<ConvergenceLoopOptions, 'pollMs' | 'debounceMs'>> = {
  pollMs: 1_000,
  debounceMs: 25,
};

export class ConvergenceLoop {
  private readonly opts: ConvergenceLoopOptions & Required<Pick<ConvergenceLoopOptions, 'pollMs' | 'debounceMs'>>;
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
  ) {
    this.opts = withDefaults(DEFAULT_CONVERGENCE_LOOP_OPTIONS, options);
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
    try {
      const cells = await this.directory.snapshot();
      const { services } = await this.store.snapshot();
      for (const name of services.keys()) {
        if (this.elector.current()?.token !== fence.token) return;
        try {
          await this.reconciler.reconcile(name, fence, cells);
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
      this.passes++;
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'convergence pass failed');
    }
  }
}
