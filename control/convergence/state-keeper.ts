/**
 * Control's own last known copy of the state it writes. The state Redis is
 * the system of record, but one that comes back empty (restarted without its files, FLUSHALL)
 * must not make control start from nothing: routers would be told to drop every route and cells
 * to stop every engine. The leader therefore keeps a copy of every key control owns — service
 * records, router groups and route tables, API tokens, cells' desired specs, lease floors,
 * volume tombstones, the leader token counter — in a file in its data directory, written after
 * each pass that changed a version counter. When the store's counters are found below the copy's,
 * the leader writes the copy back in one transaction with every route table version set above
 * anything a router has applied (routers refuse older versions and keep their table until then),
 * raises the leader token counter past the copy's, and resigns so its next term carries a token
 * newer than any the copy holds.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { KeyLayout } from '../../protocol';
import type { ServiceRecord } from '../services/service-types';

type Entry =
  | { key: string; type: 'string'; value: string }
  | { key: string; type: 'hash'; value: Record<string, string> }
  | { key: string; type: 'zset'; value: Array<[string, string]> };

/** Version counters that only grow while the store keeps its data. */
export interface StoreMarkers {
  services: number;
  routerGroups: number;
  tokens: number;
  leaderToken: number;
  /** Router group name -> table version. */
  groups: Record<string, number>;
}

export interface StateCopy {
  savedAt: number;
  prefix: string;
  markers: StoreMarkers;
  entries: Entry[];
}

/** True when any counter of `store` is below the copy's: the store lost writes control made. */
export function storeLostData(store: StoreMarkers, copy: StoreMarkers): boolean {
  if (store.services < copy.services || store.routerGroups < copy.routerGroups || store.tokens < copy.tokens)
    return true;
  return Object.entries(copy.groups).some(([name, v]) => (store.groups[name] ?? 0) < v);
}

export class StateKeeper {
  private copy: StateCopy | null = null;
  private loaded = false;
  private lastSaved = '';

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
    private readonly file: string,
    private readonly logger: Logger,
  ) {}

  /** The store's counters now. */
  async markers(): Promise<StoreMarkers> {
    const [services, routerGroups, tokens, leaderToken, groupsRaw] = await Promise.all([
      this.redis.get(this.keys.servicesVersion),
      this.redis.get(this.keys.routerGroupsVersion),
      this.redis.get(this.keys.tokensVersion),
      this.redis.get(this.keys.leaderToken),
      this.redis.hvals(this.keys.routerGroups),
    ]);
    const groups: Record<string, number> = {};
    for (const name of groupNames(groupsRaw))
      groups[name] = Number((await this.redis.get(this.keys.group(name).version)) ?? 0);
    return {
      services: Number(services ?? 0),
      routerGroups: Number(routerGroups ?? 0),
      tokens: Number(tokens ?? 0),
      leaderToken: Number(leaderToken ?? 0),
      groups,
    };
  }

  /**
   * Compares the store with the last known copy and writes the copy back when the store lost
   * data. Returns true when it restored (the caller then resigns leadership).
   */
  async restoreIfLost(): Promise<boolean> {
    const copy = await this.load();
    if (!copy) return false;
    const store = await this.markers();
    if (!storeLostData(store, copy.markers)) return false;
    const applied = await this.routerVersions(Object.keys(copy.markers.groups));
    const tx = this.redis.multi();
    for (const e of copy.entries) {
      tx.del(e.key);
      if (e.type === 'string') tx.set(e.key, e.value);
      else if (e.type === 'hash') {
        if (Object.keys(e.value).length > 0) tx.hset(e.key, e.value);
      } else if (e.value.length > 0) tx.zadd(e.key, ...e.value.flatMap(([m, s]) => [s, m]));
    }
    // Above whatever the store, the copy and every live router hold, so routers take the table.
    const versions: Record<string, number> = {};
    for (const [name, v] of Object.entries(copy.markers.groups)) {
      versions[name] = Math.max(v, store.groups[name] ?? 0, applied[name] ?? 0) + 1;
      tx.set(this.keys.group(name).version, String(versions[name]));
    }
    tx.set(this.keys.leaderToken, String(Math.max(copy.markers.leaderToken, store.leaderToken)));
    for (const e of copy.entries) {
      const cell = /^(.*):desired$/.exec(e.key)?.[1];
      if (cell && e.key.startsWith(`${this.keys.prefix}cell:`)) tx.publish(`${cell}:notify`, 'desired');
    }
    tx.publish(this.keys.servicesChanged, '*');
    await tx.exec();
    this.logger.warn(
      {
        file: this.file,
        savedAt: new Date(copy.savedAt).toISOString(),
        store,
        copy: copy.markers,
        routeVersions: versions,
      },
      'the state store lost data (its versions are older than control last wrote): restored the last known state; resigning to start a newer term',
    );
    return true;
  }

  /**
   * Writes a new copy when a counter moved since the last one. The copy only ever moves forward:
   * a store whose counters are below the copy's lost data and is never copied (a pass that began
   * before the store was wiped and saves after it would otherwise replace the good copy with an
   * empty one, and the loss would never be repaired: found by the fault-schedule checker, a wipe
   * 14 s after a platform restart left control with no services and routers with no routes), and
   * counters that moved while the keys were read mean the read may mix two states: tried again on
   * the next pass.
   */
  async saveIfChanged(): Promise<void> {
    const markers = await this.markers();
    const tag = JSON.stringify(markers);
    if (tag === this.lastSaved) return;
    const previous = await this.load();
    if (previous && storeLostData(markers, previous.markers)) {
      this.logger.warn(
        { store: markers, copy: previous.markers },
        'the state store is behind the last copy (it lost data): not copied; the next pass restores it',
      );
      return;
    }
    const copy = await this.read(markers);
    if (JSON.stringify(await this.markers()) !== tag) return;
    const tmp = `${this.file}.${process.pid}.tmp`;
    await mkdir(dirname(this.file), { recursive: true });
    // Token hashes are in it: owner-only, like the admin token file.
    await writeFile(tmp, JSON.stringify(copy), { mode: 0o600 });
    await rename(tmp, this.file);
    this.copy = copy;
    this.lastSaved = tag;
  }

  private async load(): Promise<StateCopy | null> {
    if (this.loaded) return this.copy;
    this.loaded = true;
    try {
      const copy = JSON.parse(await readFile(this.file, 'utf8')) as StateCopy;
      if (copy.prefix !== this.keys.prefix) {
        this.logger.warn({ file: this.file }, 'state copy was written for another key prefix; ignored');
        return null;
      }
      this.copy = copy;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.logger.warn({ file: this.file, err: (err as Error).message }, 'state copy unreadable; ignored');
    }
    return this.copy;
  }

  /** The highest table version each group's live routers report in their heartbeats. */
  private async routerVersions(groups: string[]): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const name of groups) {
      const prefix = this.keys.group(name).routerHeartbeatPrefix;
      let cursor = '0';
      do {
        const [next, found] = await this.redis.scan(cursor, 'MATCH', `${escapeGlob(prefix)}*`, 'COUNT', 200);
        cursor = next;
        for (const key of found) {
          try {
            const beat = JSON.parse((await this.redis.get(key)) ?? 'null') as { version?: number } | null;
            out[name] = Math.max(out[name] ?? 0, beat?.version ?? 0);
          } catch {
            // A malformed heartbeat says nothing about the version.
          }
        }
      } while (cursor !== '0');
    }
    return out;
  }

  /** Every key control owns, read in one transaction. */
  private async read(markers: StoreMarkers): Promise<StateCopy> {
    const k = this.keys;
    const [servicesRaw, cellNames] = await Promise.all([this.redis.hvals(k.services), this.redis.smembers(k.cells)]);
    const instances = servicesRaw.flatMap((t) => (JSON.parse(t) as ServiceRecord).instances.map((i) => i.id));
    const plan: Array<{ key: string; type: Entry['type'] }> = [
      { key: k.services, type: 'hash' },
      { key: k.servicesVersion, type: 'string' },
      { key: k.routerGroups, type: 'hash' },
      { key: k.routerGroupsVersion, type: 'string' },
      { key: k.tokens, type: 'hash' },
      { key: k.tokensVersion, type: 'string' },
      { key: k.volumeTombstones, type: 'hash' },
      ...Object.keys(markers.groups).flatMap((name) => {
        const g = k.group(name);
        return [
          { key: g.routes, type: 'hash' as const },
          { key: g.mappings, type: 'hash' as const },
          { key: g.expiry, type: 'zset' as const },
        ];
      }),
      ...cellNames.map((name) => ({ key: k.cell(name).desired, type: 'hash' as const })),
      ...instances.map((id) => ({ key: k.leaseFloor(id), type: 'string' as const })),
    ];
    const tx = this.redis.multi();
    for (const p of plan) {
      if (p.type === 'string') tx.get(p.key);
      else if (p.type === 'hash') tx.hgetall(p.key);
      else tx.zrangebyscore(p.key, '-inf', '+inf', 'WITHSCORES');
    }
    const res = (await tx.exec()) ?? [];
    const entries: Entry[] = [];
    plan.forEach((p, i) => {
      const value = res[i]?.[1];
      if (p.type === 'string') {
        if (typeof value === 'string') entries.push({ key: p.key, type: 'string', value });
      } else if (p.type === 'hash') {
        const h = (value ?? {}) as Record<string, string>;
        if (Object.keys(h).length > 0) entries.push({ key: p.key, type: 'hash', value: h });
      } else {
        const flat = (value ?? []) as string[];
        const pairs: Array<[string, string]> = [];
        for (let j = 0; j + 1 < flat.length; j += 2) pairs.push([flat[j]!, flat[j + 1]!]);
        if (pairs.length > 0) entries.push({ key: p.key, type: 'zset', value: pairs });
      }
    });
    return { savedAt: Date.now(), prefix: k.prefix, markers, entries };
  }
}

function groupNames(raw: string[]): string[] {
  const out: string[] = [];
  for (const text of raw) {
    try {
      out.push((JSON.parse(text) as { name: string }).name);
    } catch {
      // Skipped: a malformed group has no table to keep.
    }
  }
  return out.sort();
}

function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}
