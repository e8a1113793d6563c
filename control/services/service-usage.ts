/**
 * What admitting a service needs to know about all the others, kept up to date record by record
 * instead of recomputed from every service per create: the space service records promise each
 * cell, and the route ports services hold in each router group, with where the lowest free one
 * may be.
 */
import type { PortRange } from '../state/port-ranges';
import type { ServiceRecord } from './service-types';

export class ServiceUsage {
  private readonly promised = new Map<string, number>();
  /** Router group guid -> port -> how many services hold it (two only in a corrupt store). */
  private readonly ports = new Map<string, Map<number, number>>();
  /**
   * `guid|low-high` (one range of a group) -> a port of the range such that every port of the
   * range below it is held by a service. It moves up as ports are found held, and down when one
   * is released.
   */
  private readonly hints = new Map<string, number>();

  static of(services: Iterable<ServiceRecord>): ServiceUsage {
    const usage = new ServiceUsage();
    for (const s of services) usage.add(s);
    return usage;
  }

  /** The record of one service went from `before` to `after` (null: absent). */
  replace(before: ServiceRecord | null | undefined, after: ServiceRecord | null | undefined): void {
    if (before) this.remove(before);
    if (after) this.add(after);
  }

  /** Space the records place on `cell` (volumes of instances, started or not). */
  promisedMb(cell: string): number {
    return this.promised.get(cell) ?? 0;
  }

  /** Whether a service of router group `groupGuid` holds `port`. */
  portHeld(groupGuid: string, port: number): boolean {
    return (this.ports.get(groupGuid)?.get(port) ?? 0) > 0;
  }

  /**
   * Up to `count` ports of `ranges` (in their order, each range upwards) that no service of the
   * group holds and `skip` does not name (ports a route holds, found by the caller).
   */
  freePorts(groupGuid: string, ranges: readonly PortRange[], count: number, skip: ReadonlySet<number>): number[] {
    const held = this.ports.get(groupGuid);
    const out: number[] = [];
    for (const [low, high] of ranges) {
      const key = `${groupGuid}|${low}-${high}`;
      let p = Math.max(low, this.hints.get(key) ?? low);
      let hinted = false;
      for (; p <= high && out.length < count; p++) {
        if ((held?.get(p) ?? 0) > 0) continue;
        if (!hinted) {
          hinted = true;
          this.hints.set(key, p);
        }
        if (!skip.has(p)) out.push(p);
      }
      if (!hinted && p > high) this.hints.set(key, high + 1);
      if (out.length >= count) break;
    }
    return out;
  }

  private add(s: ServiceRecord): void {
    for (const i of s.instances) this.promised.set(i.cell, (this.promised.get(i.cell) ?? 0) + s.volume.sizeMb);
    let held = this.ports.get(s.routerGroupGuid);
    if (!held) this.ports.set(s.routerGroupGuid, (held = new Map()));
    held.set(s.port, (held.get(s.port) ?? 0) + 1);
  }

  private remove(s: ServiceRecord): void {
    for (const i of s.instances) {
      const left = (this.promised.get(i.cell) ?? 0) - s.volume.sizeMb;
      if (left > 0) this.promised.set(i.cell, left);
      else this.promised.delete(i.cell);
    }
    const held = this.ports.get(s.routerGroupGuid);
    const n = (held?.get(s.port) ?? 0) - 1;
    if (n > 0) held?.set(s.port, n);
    else {
      held?.delete(s.port);
      // A released port may be the lowest free one of its range now.
      const prefix = `${s.routerGroupGuid}|`;
      for (const [key, hint] of this.hints) if (key.startsWith(prefix) && s.port < hint) this.hints.set(key, s.port);
    }
  }
}
