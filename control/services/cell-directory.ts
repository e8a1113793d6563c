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

export class CellDirectory {
  /** Last record seen per cell, so a dead cell still shows its zone and capacity. */
  private readonly lastRecords = new Map<string, CellRecord>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
  ) {}

  async snapshot(): Promise<Map<string, CellSnapshot>> {
    const names = (await this.redis.smembers(this.keys.cells)).sort();
    const out = new Map<string, CellSnapshot>();
    if (names.length === 0) return out;
    const tx = this.redis.multi();
    for (const name of names) tx.get(this.keys.cell(name).registration).hgetall(this.keys.cell(name).actual);
    const res = (await tx.exec()) ?? [];
    names.forEach((name, i) => {
      const regText = res[2 * i]?.[1] as string | null;
      const actualRaw = (res[2 * i + 1]?.[1] as Record<string, string> | null) ?? {};
      let record: CellRecord | null = null;
      if (regText) {
        record = JSON.parse(regText) as CellRecord;
        this.lastRecords.set(name, record);
      }
      const actual = new Map<string, ActualInstance>();
      for (const [id, text] of Object.entries(actualRaw)) {
        try {
          actual.set(id, JSON.parse(text) as ActualInstance);
        } catch {
          // A malformed report is ignored; the cell rewrites it on its next change.
        }
      }
      out.set(name, { name, alive: record !== null, record: record ?? this.lastRecords.get(name) ?? null, actual });
    });
    return out;
  }
}
