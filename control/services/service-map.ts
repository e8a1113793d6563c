/**
 * The services of one snapshot version, shared with the versions after it. A new version is the
 * old one plus the records that changed (an overlay), so a change costs the store its size, not
 * the number of services; the overlay is folded into a new base once it grows past a bound, which
 * spreads that copy over many versions. Neither base nor overlay is mutated once a version exists.
 */
import type { ServiceRecord } from './service-types';

/** Overlay entries before a version folds them into a new base (one O(N) copy per this many changes). */
const OVERLAY_LIMIT = 512;

export class ServiceMap implements ReadonlyMap<string, ServiceRecord> {
  readonly size: number;

  private constructor(
    private readonly base: ReadonlyMap<string, ServiceRecord>,
    /** Changed since base: the new record, or null where it was removed. */
    private readonly overlay: ReadonlyMap<string, ServiceRecord | null>,
    size: number,
  ) {
    this.size = size;
  }

  static of(records: ReadonlyMap<string, ServiceRecord>): ServiceMap {
    return new ServiceMap(records, new Map(), records.size);
  }

  /** This version with `changes` applied (null removes); this one stays as it is. */
  with(changes: ReadonlyMap<string, ServiceRecord | null>): ServiceMap {
    const overlay = new Map(this.overlay);
    let size = this.size;
    for (const [name, record] of changes) {
      const had = this.has(name);
      if (record) {
        if (!had) size++;
      } else if (had) size--;
      if (record === null && !this.base.has(name)) overlay.delete(name);
      else overlay.set(name, record);
    }
    if (overlay.size <= OVERLAY_LIMIT) return new ServiceMap(this.base, overlay, size);
    const folded = new Map<string, ServiceRecord>();
    for (const [name, record] of new ServiceMap(this.base, overlay, size)) folded.set(name, record);
    return ServiceMap.of(folded);
  }

  get(name: string): ServiceRecord | undefined {
    const over = this.overlay.get(name);
    if (over !== undefined) return over ?? undefined;
    return this.base.get(name);
  }

  has(name: string): boolean {
    const over = this.overlay.get(name);
    if (over !== undefined) return over !== null;
    return this.base.has(name);
  }

  *entries(): MapIterator<[string, ServiceRecord]> {
    for (const [name, record] of this.base) if (!this.overlay.has(name)) yield [name, record];
    for (const [name, record] of this.overlay) if (record) yield [name, record];
  }

  *keys(): MapIterator<string> {
    for (const [name] of this.entries()) yield name;
  }

  *values(): MapIterator<ServiceRecord> {
    for (const [, record] of this.entries()) yield record;
  }

  [Symbol.iterator](): MapIterator<[string, ServiceRecord]> {
    return this.entries();
  }

  forEach(fn: (value: ServiceRecord, key: string, map: ReadonlyMap<string, ServiceRecord>) => void): void {
    for (const [name, record] of this.entries()) fn(record, name, this);
  }
}
