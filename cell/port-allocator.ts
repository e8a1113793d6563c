/**
 * Picks instance ports from the cell's range. A port counts as taken when an instance of this
 * cell holds it or when binding it fails (another process of the host owns it).
 */
import { createServer } from 'node:net';
import { ErrorCode, SfError } from '../common';

export interface PortRange {
  from: number;
  to: number;
}

export const DEFAULT_PORT_RANGE: PortRange = { from: 20000, to: 20999 };

export function parsePortRange(value: string): PortRange {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(value);
  const from = m ? Number(m[1]) : NaN;
  const to = m ? Number(m[2]) : NaN;
  if (!m || from < 1 || to > 65535 || from > to) {
    throw new SfError(
      ErrorCode.InvalidOption,
      `port range must be FROM-TO within 1-65535, got '${value}'`,
      'portRange',
    );
  }
  return { from, to };
}

export function canBind(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

export class PortAllocator {
  private readonly reserved = new Set<number>();
  private next: number;

  constructor(
    private readonly range: PortRange,
    private readonly host: string,
  ) {
    this.next = range.from;
  }

  reserve(port: number): void {
    this.reserved.add(port);
  }

  release(port: number): void {
    this.reserved.delete(port);
  }

  /** The preferred port when it is free, else the next free one (round robin, to avoid reuse races). */
  async allocate(preferred?: number | null): Promise<number> {
    // A relocated volume remembers its old cell's port, which may lie outside this range.
    const inRange =
      preferred !== undefined && preferred !== null && preferred >= this.range.from && preferred <= this.range.to;
    if (inRange && !this.reserved.has(preferred) && (await canBind(preferred, this.host))) {
      this.reserved.add(preferred);
      return preferred;
    }
    const size = this.range.to - this.range.from + 1;
    for (let i = 0; i < size; i++) {
      const port = this.next;
      this.next = port >= this.range.to ? this.range.from : port + 1;
      if (this.reserved.has(port)) continue;
      if (await canBind(port, this.host)) {
        this.reserved.add(port);
        return port;
      }
    }
    throw new SfError(ErrorCode.NoFreePort, `no free port in ${this.range.from}-${this.range.to} on ${this.host}`);
  }
}
