/**
 * Expires TCP routes whose TTL ran out. Every control runs one; the store's guarded commits make
 * concurrent sweeps safe (the loser re-reads and finds nothing left to remove).
 */
import type { TcpRouteStore } from '../state/tcp-route-store';

export interface RouteTtlSweeperOptions {
  /** @default 1000 ms between sweeps; a route outlives its TTL by at most this much */
  intervalMs?: number;
  onError?: (err: unknown) => void;
}

export class RouteTtlSweeper {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<number> | null = null;

  constructor(
    private readonly routes: TcpRouteStore,
    private readonly options: RouteTtlSweeperOptions = {},
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep(), this.options.intervalMs ?? 1_000);
    this.timer.unref();
  }

  /** One sweep now; overlapping calls share the sweep in progress. */
  sweep(): Promise<number> {
    this.running ??= this.routes
      .sweepExpired()
      .catch((err: unknown) => {
        this.options.onError?.(err);
        return 0;
      })
      .finally(() => (this.running = null));
    return this.running;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }
}
