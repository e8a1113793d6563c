/**
 * Route ports the router could not open. Such a port serves nothing the route says, and if
 * another process holds it, a client of the route talks to that process instead: no TLS policy,
 * no fencing. So a failed port is not just logged once: the router retries it, shows it in
 * `/health` and `/metrics`, and reports it in its heartbeat, and control does not call the
 * route served while any router reports it (docs/router.md, "Ports the router cannot open").
 */
import type { SfError } from '../common';

export interface ListenFailure {
  port: number;
  /** Why the last attempt failed, e.g. `cannot listen on 127.0.0.1:5432: EADDRINUSE`. */
  reason: string;
  /** Epoch milliseconds of the first failed attempt in a row. */
  since: number;
}

/** @default ms between attempts to open route ports that failed to open */
export const DEFAULT_LISTEN_RETRY_MS = 2_000;
/** At most this many failed ports are listed in `/health` and in a heartbeat; the count is exact. */
export const LISTED_LISTEN_FAILURES = 100;

export class ListenFailures {
  private readonly byPort = new Map<number, ListenFailure>();

  get size(): number {
    return this.byPort.size;
  }

  /**
   * Takes an apply's outcome. `inTable` tells whether a port is still in the table: a failed port
   * that left it is forgotten. Returns the failures that are new (or whose reason changed), and
   * the ports that opened after failing, so that each is logged once.
   */
  update(
    failed: ReadonlyArray<{ port: number; error: SfError }>,
    opened: readonly number[],
    inTable: (port: number) => boolean,
    now = Date.now(),
  ): { fresh: ListenFailure[]; recovered: number[] } {
    const recovered: number[] = [];
    for (const port of opened) if (this.byPort.delete(port)) recovered.push(port);
    const fresh: ListenFailure[] = [];
    for (const { port, error } of failed) {
      const known = this.byPort.get(port);
      if (known?.reason === error.message) continue;
      const failure = { port, reason: error.message, since: known?.since ?? now };
      this.byPort.set(port, failure);
      fresh.push(failure);
    }
    if (this.byPort.size > 0) for (const port of [...this.byPort.keys()]) if (!inTable(port)) this.byPort.delete(port);
    return { fresh, recovered };
  }

  list(limit = LISTED_LISTEN_FAILURES): ListenFailure[] {
    const out: ListenFailure[] = [];
    for (const failure of this.byPort.values()) {
      if (out.length >= limit) break;
      out.push(failure);
    }
    return out;
  }
}
