/**
 * Control's read side of the cell protocol (cell/cell-protocol.ts): every cell that ever
 * registered, whether its registration key still exists (liveness), its record, and what it
 * reports in its `actual` hash. Read-only: cells own these keys.
 */
import type { Redis } from 'ioredis';
import type { KeyLayout, ActualInstance, CellRecord } from '../../protocol';

export interface CellSnapshot {
  name: string;
  alive: boolean;
  /** The last registration seen; null for a cell whose key expired (only the name is known). */
  record: CellRecord | null;
  /** instanceId -> what the cell reports. */
  actual: Map<string, ActualInstance>;
}

/** What the leader keeps of one cell between passes: report texts, so unchanged ones are not parsed again. */
interface CachedCell {
  texts: Map<string, string>;
  actual: Map<string, ActualInstance>;
}

/** The heartbeat time in a registration's JSON text (the one field each heartbeat changes). */
const HEARTBEAT_AT = /"heartbeatAt":(\d+)/;

export class CellDirectory {
  /** Last record seen per cell, so a dead cell still shows its zone and capacity. */
  private readonly lastRecords = new Map<string, CellRecord>();
  private readonly cached = new Map<string, CachedCell>();
  /** Each cell's last registration text without its `heartbeatAt`, and its record. */
  private readonly parsed = new Map<string, { rest: string; record: CellRecord }>();
  /** Cells that reported since their actual hash was last read. */
  private readonly dirty = new Set<string>();
  /** Where the next `view(refresh)` goes on re-reading cells in turn. */
  private turn = 0;
  /** The view being read, shared by whoever asks meanwhile. */
  private viewing: Promise<Map<string, CellSnapshot>> | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
  ) {}

  /** A cell reported (an `sf:cell-events` message): its actual hash is read again by the next view. */
  markDirty(cell: string): void {
    this.dirty.add(cell);
  }

  /**
   * Every cell and everything it reports, read from the store now. With `about`, only those
   * cells' reports are read now (with every registration, so liveness and addresses are current
   * for all); the others' come from the last read. A failover needs the reports of its service's
   * cells, not the 10,000 of a thousand cells: read whole, each of its several snapshots grew
   * with everything the platform runs.
   */
  async snapshot(about?: readonly string[]): Promise<Map<string, CellSnapshot>> {
    const names = (await this.redis.smembers(this.keys.cells)).sort();
    if (about === undefined) {
      this.dirty.clear();
      return this.read(names, new Set(names));
    }
    const wanted = new Set(about);
    const fresh = new Set(names.filter((n) => wanted.has(n) || !this.cached.has(n)));
    for (const n of fresh) this.dirty.delete(n);
    return this.read(names, fresh);
  }

  /**
   * A view that may have started being read just before the call: callers at the same moment (a
   * burst of creates) share one read, which costs O(cells). For admission, whose check is
   * advisory (the leader places); the leader's pass reads its own `view()`, so a report that
   * arrived meanwhile is in it.
   */
  sharedView(): Promise<Map<string, CellSnapshot>> {
    this.viewing ??= this.view().finally(() => (this.viewing = undefined));
    return this.viewing;
  }

  /**
   * The leader's view for one pass: every registration (liveness) is read each time, in one
   * transaction with the actual hashes of the cells that reported since the last read (and of
   * cells not read yet) and of a `refresh` share of the cells in turn; the rest comes from the
   * last read. A report whose text did not change keeps its object, so a caller can tell
   * "unchanged" by identity. The leader's shares add up to every cell once per resync period, so
   * a lost message costs at most that period.
   */
  async view(refresh = 0): Promise<Map<string, CellSnapshot>> {
    const names = (await this.redis.smembers(this.keys.cells)).sort();
    const stale = new Set(names.filter((n) => this.dirty.has(n) || !this.cached.has(n)));
    // `refresh` of the cells besides, in turn: what a lost message hid is read within the time
    // the caller's shares add up to one.
    const turn = Math.min(names.length, Math.ceil(refresh * names.length));
    for (let i = 0; i < turn; i++) stale.add(names[(this.turn + i) % names.length] as string);
    this.turn = names.length > 0 ? (this.turn + turn) % names.length : 0;
    for (const n of stale) this.dirty.delete(n);
    return this.read(names, stale);
  }

  /** The cells the services' instances are on, read now (an API view needs no other cell). */
  async cellsOf(
    services: ReadonlyArray<{ instances: ReadonlyArray<{ cell: string }> }>,
  ): Promise<Map<string, CellSnapshot>> {
    const names = [...new Set(services.flatMap((s) => s.instances.map((i) => i.cell)))].sort();
    return this.read(names, new Set(names));
  }

  /** Registrations of `names` and the actual hashes of `fresh`; the others from the cache. */
  private async read(names: string[], fresh: Set<string>): Promise<Map<string, CellSnapshot>> {
    const out = new Map<string, CellSnapshot>();
    if (names.length === 0) return out;
    const reread = names.filter((n) => fresh.has(n));
    const tx = this.redis.multi();
    tx.mget(...names.map((n) => this.keys.cell(n).registration));
    for (const name of reread) tx.hgetall(this.keys.cell(name).actual);
    const res = (await tx.exec()) ?? [];
    for (const [err] of res) if (err) throw err;
    const regs = (res[0]?.[1] as Array<string | null>) ?? [];
    reread.forEach((name, i) => this.remember(name, (res[i + 1]?.[1] as Record<string, string> | null) ?? {}));
    names.forEach((name, i) => {
      const regText = regs[i];
      let record: CellRecord | null = null;
      if (regText) {
        record = this.parse(name, regText);
        this.lastRecords.set(name, record);
      }
      out.set(name, {
        name,
        alive: record !== null,
        record: record ?? this.lastRecords.get(name) ?? null,
        actual: this.cached.get(name)?.actual ?? new Map(),
      });
    });
    return out;
  }

  /**
   * A registration's record. Between two heartbeats only `heartbeatAt` changes: the record parsed
   * before is reused with the new time (every pass read 1,000 registrations, and parsing them was
   * a large share of a pass at 1,000 cells).
   */
  private parse(name: string, text: string): CellRecord {
    const at = HEARTBEAT_AT.exec(text);
    const rest = at ? text.slice(0, at.index) + text.slice(at.index + at[0].length) : text;
    const before = this.parsed.get(name);
    if (at && before?.rest === rest) return { ...before.record, heartbeatAt: Number(at[1]) };
    const record = JSON.parse(text) as CellRecord;
    this.parsed.set(name, { rest, record });
    return record;
  }

  private remember(name: string, raw: Record<string, string>): void {
    const before = this.cached.get(name);
    const texts = new Map<string, string>();
    const actual = new Map<string, ActualInstance>();
    for (const [id, text] of Object.entries(raw)) {
      const same = before?.texts.get(id) === text ? before.actual.get(id) : undefined;
      if (same) {
        texts.set(id, text);
        actual.set(id, same);
        continue;
      }
      try {
        actual.set(id, JSON.parse(text) as ActualInstance);
        texts.set(id, text);
      } catch {
        // A malformed report is ignored; the cell rewrites it on its next change.
      }
    }
    this.cached.set(name, { texts, actual });
  }
}
