/**
 * Service records in Redis. Every write goes through one fenced, version-guarded script
 * (leader/fenced-commit.ts): API writes (create, mark for deletion) carry no fence, the leader's
 * writes (placement, desired specs, teardown) carry its token, so a deposed leader cannot
 * overwrite its successor's decisions. Control keeps nothing in memory that a restart would lose.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';
import { withFencedRetry, type FencedPlan, type LeaderFence } from '../leader/fenced-commit';
import type { CasOp } from '../state/cas-commit';
import { NOTIFY_DESIRED, type KeyLayout } from '../../protocol';
import type { ServiceEvent, ServiceRecord } from './service-types';
import { ServiceMap } from './service-map';
import { ServiceUsage } from './service-usage';

/** Service events kept for `GET /v3/service_instances/:name/events` and operators. */
export const SERVICE_EVENT_HISTORY = 500;

export interface ServiceSnapshot {
  version: number;
  /** Shared with later snapshots (service-map.ts): read only. */
  services: ReadonlyMap<string, ServiceRecord>;
}

/** Tries of a catch-up before a full read (waits 10, 20, … ms for messages not heard yet: 450 ms in all). */
const CATCH_UP_ATTEMPTS = 10;

/** Change log entries kept for changedBetween (a pass that falls further behind checks everything). */
const CHANGE_LOG_LIMIT = 4_096;

/** What a leader (or API) change wants to write besides the record: cell specs, events. */
export interface ServiceChange {
  /** The new record, or null to remove it. */
  record: ServiceRecord | null;
  extraOps?: CasOp[];
  events?: Array<Omit<ServiceEvent, 'at' | 'leaderToken'>>;
}

/**
 * The message published on `sf:services:changed` by a commit that produces `version`: the
 * version, a space, the service's name. `*` means "anything may have changed" (a restore).
 */
export function servicesChangedMessage(version: number, name: string): string {
  return `${version} ${name}`;
}

/** What `changeMany` asks of its caller: the changes to write, given the current records. */
export type DecideMany<T> = (
  current: ReadonlyMap<string, ServiceRecord | null>,
  snapshot: ServiceSnapshot,
) => Promise<{ changes: ReadonlyMap<string, ServiceChange>; result: T }>;

/** Requests that share one commit at most (changeJoined). */
const JOIN_LIMIT = 200;

/** A request waiting to share a commit with others (changeJoined). */
interface JoinedRequest {
  name: string;
  decide: (current: ServiceRecord | null) => Promise<{ change: ServiceChange; result: unknown } | { done: unknown }>;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

export class ServiceStore {
  /**
   * The last snapshot read, kept so that a pass over 10,000 services does not re-read 10,000
   * records: it is brought up to date from the names the change messages carried (one HMGET),
   * and read whole again whenever a message may have been missed. Records in it are shared and
   * never mutated (every change builds a new record).
   */
  private cached: ServiceSnapshot | null = null;
  /** Change messages reach this store (noteChanged was called): worth waiting for one. */
  private hearing = false;
  /** version -> service name, from change messages newer than the cached snapshot. */
  private readonly heard = new Map<number, string>();
  /** Sums over the cached snapshot's records, kept record by record (service-usage.ts). */
  private usage: ServiceUsage | null = null;
  private usageOf: ServiceSnapshot | null = null;
  /** Each snapshot that became the cached one, numbered, with the names it changed (null: unknown). */
  private readonly serials = new WeakMap<ServiceSnapshot, number>();
  private serial = 0;
  private readonly log: Array<{ serial: number; names: readonly string[] | null }> = [];
  /**
   * This process's changes, one at a time. Every change is guarded by the one services version,
   * so concurrent changes of one process only made each other retry: about 90 parallel creates
   * ended in SF_ERR_STORE_BUSY. In turn, each commits at its first attempt unless another control
   * wrote meanwhile (that case still retries).
   */
  private readonly waiting: Array<{ leader: boolean; run: () => Promise<void> }> = [];
  private busy = false;
  /** Requests waiting to share a commit (changeJoined), and whether a turn is queued for them. */
  private readonly joining: JoinedRequest[] = [];
  private joinQueued = false;
  /** Set inside a change, so a change started from within one (nested) does not wait for itself. */
  private readonly inChange = new AsyncLocalStorage<boolean>();

  constructor(
    private readonly redis: Redis,
    readonly keys: KeyLayout,
  ) {}

  /**
   * Told of each message on `sf:services:changed` (the convergence loop's subscription). Without
   * it every snapshot is a full read, as before.
   */
  noteChanged(message: string): void {
    this.hearing = true;
    const space = message.indexOf(' ');
    const version = Number(message.slice(0, space));
    if (space < 0 || !Number.isInteger(version)) {
      this.cached = null;
      this.heard.clear();
      return;
    }
    if (!this.cached || version > this.cached.version) this.heard.set(version, message.slice(space + 1));
  }

  /** Every record at one version: the cached one brought up to date, or a full read. */
  async snapshot(): Promise<ServiceSnapshot> {
    // A catch-up fails when another change commits between its two reads, and a version is not
    // heard yet when its message is still on its way (the subscription is another connection):
    // neither is a reason to read every record (at 10,000 services those full reads took most of
    // the leader's time while creates went on), so it tries again, waiting a little for messages.
    for (let attempt = 0; attempt < CATCH_UP_ATTEMPTS; attempt++) {
      const cached = this.cached;
      if (!cached) break;
      const version = Number((await this.redis.get(this.keys.servicesVersion)) ?? 0);
      // Below what was cached: the store went back (restored, wiped). Read everything.
      if (version < cached.version) break;
      const from = this.cached ?? cached;
      if (from.version >= version) return from;
      const names = new Set<string>();
      let heardAll = true;
      for (let v = from.version + 1; v <= version && heardAll; v++) {
        const name = this.heard.get(v);
        if (name === undefined) heardAll = false;
        else names.add(name);
      }
      if (!heardAll) {
        // A store that hears no messages (no subscription) reads everything, as before.
        if (!this.hearing) break;
        await new Promise((r) => setTimeout(r, 10 * (attempt + 1)));
        continue;
      }
      const caught = await this.catchUp(from, version, [...names]);
      if (caught) return caught;
    }
    return this.readAll();
  }

  private async readAll(): Promise<ServiceSnapshot> {
    const res = await this.redis.multi().get(this.keys.servicesVersion).hgetall(this.keys.services).exec();
    const version = Number(res?.[0]?.[1] ?? 0);
    const raw = (res?.[1]?.[1] as Record<string, string> | null) ?? {};
    const services = new Map<string, ServiceRecord>();
    for (const [name, text] of Object.entries(raw)) services.set(name, JSON.parse(text) as ServiceRecord);
    return this.keep({ version, services: ServiceMap.of(services) }, null);
  }

  /** The cached snapshot with `names` re-read, if the store is still at `version`. */
  private async catchUp(cached: ServiceSnapshot, version: number, names: string[]): Promise<ServiceSnapshot | null> {
    const res = await this.redis
      .multi()
      .get(this.keys.servicesVersion)
      .hmget(this.keys.services, ...names)
      .exec();
    if (Number(res?.[0]?.[1] ?? 0) !== version) return null;
    const texts = (res?.[1]?.[1] as Array<string | null> | null) ?? [];
    const changes = new Map<string, ServiceRecord | null>();
    names.forEach((name, i) => {
      const text = texts[i];
      changes.set(name, text ? (JSON.parse(text) as ServiceRecord) : null);
    });
    const base = cached.services instanceof ServiceMap ? cached.services : ServiceMap.of(cached.services);
    return this.keep({ version, services: base.with(changes) }, changes);
  }

  /** `changes`: what differs from the cached snapshot (null: unknown, a full read). */
  private keep(snapshot: ServiceSnapshot, changes: ReadonlyMap<string, ServiceRecord | null> | null): ServiceSnapshot {
    if (!this.cached || snapshot.version >= this.cached.version) {
      const before = this.cached;
      this.cached = snapshot;
      for (const v of this.heard.keys()) if (v <= snapshot.version) this.heard.delete(v);
      if (changes && this.usage && this.usageOf === before && before) {
        for (const [name, record] of changes) this.usage.replace(before.services.get(name), record);
        this.usageOf = snapshot;
      } else {
        this.usage = null;
        this.usageOf = null;
      }
      this.serials.set(snapshot, ++this.serial);
      this.log.push({ serial: this.serial, names: changes ? [...changes.keys()] : null });
      if (this.log.length > CHANGE_LOG_LIMIT) this.log.splice(0, this.log.length - CHANGE_LOG_LIMIT);
    }
    return snapshot;
  }

  /**
   * Sums over the records of `snapshot` (promised space per cell, ports held per group): kept up
   * to date change by change for the latest snapshot, computed afresh for any other.
   */
  usageAt(snapshot: ServiceSnapshot): ServiceUsage {
    if (snapshot === this.cached) {
      if (this.usageOf !== snapshot || !this.usage) {
        this.usage = ServiceUsage.of(snapshot.services.values());
        this.usageOf = snapshot;
      }
      return this.usage;
    }
    return ServiceUsage.of(snapshot.services.values());
  }

  /**
   * The names whose records may differ between two snapshots this store returned, `older` taken
   * first; null when that is not known (a full read between them, or too long ago): then any may.
   */
  changedBetween(older: ServiceSnapshot, newer: ServiceSnapshot): Set<string> | null {
    if (older === newer) return new Set();
    const from = this.serials.get(older);
    const to = this.serials.get(newer);
    if (from === undefined || to === undefined || to < from) return null;
    const first = this.log[0];
    if (!first || first.serial > from + 1) return null;
    const names = new Set<string>();
    for (const entry of this.log) {
      if (entry.serial <= from || entry.serial > to) continue;
      if (!entry.names) return null;
      for (const n of entry.names) names.add(n);
    }
    return names;
  }

  async get(name: string): Promise<ServiceRecord | null> {
    const text = await this.redis.hget(this.keys.services, name);
    return text ? (JSON.parse(text) as ServiceRecord) : null;
  }

  async mustGet(name: string): Promise<ServiceRecord> {
    const record = await this.get(name);
    if (!record) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
    return record;
  }

  async list(): Promise<ServiceRecord[]> {
    const { services } = await this.snapshot();
    return [...services.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Read-modify-write of one service: `decide` sees the current record (null when absent) and the
   * whole snapshot, and returns the change, or null to write nothing.
   */
  async change<T>(
    name: string,
    fence: LeaderFence | null,
    decide: (
      current: ServiceRecord | null,
      snapshot: ServiceSnapshot,
    ) => Promise<{ change: ServiceChange; result: T } | { done: T }>,
  ): Promise<T> {
    return this.inTurn(fence, () => this.changeNow(name, fence, decide));
  }

  /**
   * Read-modify-write of several services in one commit (the leader's first placement of a burst
   * of new services: one commit per service held scheduling to a few dozen a second). `decide`
   * sees the current records of `names` (null when absent) and the snapshot, and returns the
   * changes to write (names it leaves out are not written). Guarded by the services version like
   * `change`; the version moves on by the number of records written, and each record's change
   * message carries its own version, so every reader's catch-up names each of them.
   */
  async changeMany<T>(names: readonly string[], fence: LeaderFence | null, decide: DecideMany<T>): Promise<T> {
    return this.inTurn(fence, () => this.changeManyNow(names, fence, decide));
  }

  /**
   * `change` without a fence (an API request) that may share its commit with others of its kind
   * waiting at the same time: all of them, up to JOIN_LIMIT, are decided against one snapshot and
   * written in one version-guarded commit (`changeMany`), each record's change message carrying
   * its own version. For requests that each touch only their own record and decide from it alone
   * (a deletion request): 10,000 deletions, one commit and two round trips each in turn, took
   * longer than the teardown that follows them. A request whose decision throws fails alone; one
   * for a record already in the group waits for the next commit.
   */
  async changeJoined<T>(
    name: string,
    decide: (current: ServiceRecord | null) => Promise<{ change: ServiceChange; result: T } | { done: T }>,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.joining.push({
        name,
        decide: decide as JoinedRequest['decide'],
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      if (!this.joinQueued) {
        this.joinQueued = true;
        void this.inTurn(null, () => this.commitJoined()).catch(() => undefined);
      }
    });
  }

  /** One commit for the joined requests waiting now (the rest take the next turn). */
  private async commitJoined(): Promise<void> {
    this.joinQueued = false;
    const group: JoinedRequest[] = [];
    const names = new Set<string>();
    const later: JoinedRequest[] = [];
    for (const request of this.joining.splice(0)) {
      if (group.length < JOIN_LIMIT && !names.has(request.name)) {
        group.push(request);
        names.add(request.name);
      } else later.push(request);
    }
    if (later.length > 0) {
      this.joining.unshift(...later);
      this.joinQueued = true;
      // Queued behind this commit, not run inside it: from within a change, inTurn runs its work
      // at once (a nested change), and two joined commits at once only made each other retry.
      this.inChange.exit(() => void this.inTurn(null, () => this.commitJoined()).catch(() => undefined));
    }
    const outcomes = new Map<JoinedRequest, { ok: true; value: unknown } | { ok: false; err: unknown }>();
    try {
      await this.changeManyNow([...names], null, async (current) => {
        outcomes.clear();
        const changes = new Map<string, ServiceChange>();
        for (const request of group) {
          try {
            const decision = await request.decide(current.get(request.name) ?? null);
            if ('done' in decision) outcomes.set(request, { ok: true, value: decision.done });
            else {
              changes.set(request.name, decision.change);
              outcomes.set(request, { ok: true, value: decision.result });
            }
          } catch (err) {
            outcomes.set(request, { ok: false, err });
          }
        }
        return { changes, result: undefined };
      });
    } catch (err) {
      for (const request of group) request.reject(err);
      return;
    }
    for (const request of group) {
      const outcome = outcomes.get(request);
      if (outcome?.ok) request.resolve(outcome.value);
      else request.reject(outcome ? outcome.err : new Error('no decision'));
    }
  }

  /** Runs `work` in this process's turn of changes (at once inside a change: nested). */
  private inTurn<T>(fence: LeaderFence | null, work: () => Promise<T>): Promise<T> {
    if (this.inChange.getStore()) return work();
    return new Promise<T>((resolve, reject) => {
      this.waiting.push({
        leader: fence !== null,
        run: () =>
          this.inChange
            .run(true, work)
            .then(resolve, reject)
            .finally(() => {
              this.busy = false;
              this.next();
            }),
      });
      this.next();
    });
  }

  /**
   * Starts the next waiting change: the leader's first. API creates arrive many at a time and
   * each holds the turn for its admission; behind them the leader's placements waited their turn
   * eight creates long, so at 10,000 services scheduling fell minutes behind creation.
   */
  private next(): void {
    if (this.busy) return;
    const leader = this.waiting.findIndex((w) => w.leader);
    const [turn] = this.waiting.splice(leader >= 0 ? leader : 0, 1);
    if (!turn) return;
    this.busy = true;
    void turn.run();
  }

  private changeNow<T>(
    name: string,
    fence: LeaderFence | null,
    decide: (
      current: ServiceRecord | null,
      snapshot: ServiceSnapshot,
    ) => Promise<{ change: ServiceChange; result: T } | { done: T }>,
  ): Promise<T> {
    // The plan of the last attempt; when withFencedRetry returns after it, it is what committed.
    let planned: { version: number; record: ServiceRecord | null } | null = null;
    const result = withFencedRetry(this.redis, fence, async (): Promise<FencedPlan<T>> => {
      planned = null;
      const snapshot = await this.snapshot();
      // A copy: the snapshot's records are shared with later passes and must stay as read.
      const current = snapshot.services.get(name);
      const decision = await decide(current ? structuredClone(current) : null, snapshot);
      if ('done' in decision) return decision;
      const { record } = decision.change;
      planned = {
        version: snapshot.version + 1,
        record: record ? (JSON.parse(JSON.stringify(record)) as ServiceRecord) : null,
      };
      return {
        guards: [{ key: this.keys.servicesVersion, expected: snapshot.version }],
        ops: this.ops(name, decision.change, fence, snapshot.version + 1),
        result: decision.result,
      };
    });
    return result.then((value) => {
      if (planned) this.learn(name, planned.version, planned.record);
      return value;
    });
  }

  private changeManyNow<T>(names: readonly string[], fence: LeaderFence | null, decide: DecideMany<T>): Promise<T> {
    let planned: { version: number; records: Map<string, ServiceRecord | null> } | null = null;
    const result = withFencedRetry(this.redis, fence, async (): Promise<FencedPlan<T>> => {
      planned = null;
      const snapshot = await this.snapshot();
      const current = new Map<string, ServiceRecord | null>();
      for (const name of names) {
        const record = snapshot.services.get(name);
        current.set(name, record ? structuredClone(record) : null);
      }
      const { changes, result } = await decide(current, snapshot);
      if (changes.size === 0) return { done: result };
      const ops: CasOp[] = [];
      const records = new Map<string, ServiceRecord | null>();
      let version = snapshot.version;
      for (const [name, change] of changes) {
        ops.push(...this.ops(name, change, fence, ++version));
        records.set(name, change.record ? (JSON.parse(JSON.stringify(change.record)) as ServiceRecord) : null);
      }
      dropRepeatedNotifies(ops);
      // The script bumps the version by one; each further record moves it one more.
      if (version > snapshot.version + 1)
        ops.push({ cmd: 'SET', key: this.keys.servicesVersion, value: String(version) });
      planned = { version, records };
      return { guards: [{ key: this.keys.servicesVersion, expected: snapshot.version }], ops, result };
    });
    return result.then((value) => {
      const done = planned as { version: number; records: Map<string, ServiceRecord | null> } | null;
      if (done) this.learnMany(done.version - done.records.size, done.version, done.records);
      return value;
    });
  }

  /**
   * This process's own commit goes into the cache at once: the next change (the leader's next
   * reconcile) would otherwise find the version moved before the change message arrived, and read
   * every record again (at 10,000 services that full read made placement crawl).
   */
  private learn(name: string, version: number, record: ServiceRecord | null): void {
    this.learnMany(version - 1, version, new Map([[name, record]]));
  }

  /** Several records committed together, moving the version from `from` to `to`. */
  private learnMany(from: number, to: number, changes: ReadonlyMap<string, ServiceRecord | null>): void {
    const cached = this.cached;
    if (!cached || cached.version !== from) return;
    const base = cached.services instanceof ServiceMap ? cached.services : ServiceMap.of(cached.services);
    this.keep({ version: to, services: base.with(changes) }, changes);
  }

  /** Who holds the leader lock now, from the lock's value `${holderId}|${token}`. */
  async leaderHolder(): Promise<{ holder: string; token: number } | null> {
    const value = await this.redis.get(this.keys.leaderLock);
    if (!value) return null;
    const bar = value.lastIndexOf('|');
    return { holder: value.slice(0, bar), token: Number(value.slice(bar + 1)) };
  }

  async events(name?: string, limit = 100): Promise<ServiceEvent[]> {
    const texts = await this.redis.lrange(this.keys.serviceEventLog, 0, SERVICE_EVENT_HISTORY - 1);
    const events = texts.map((t) => JSON.parse(t) as ServiceEvent).filter((e) => !name || e.service === name);
    return events.slice(0, limit);
  }

  private ops(name: string, change: ServiceChange, fence: LeaderFence | null, version: number): CasOp[] {
    const ops: CasOp[] = [];
    if (change.record)
      ops.push({ cmd: 'HSET', key: this.keys.services, field: name, value: JSON.stringify(change.record) });
    else ops.push({ cmd: 'HDEL', key: this.keys.services, field: name });
    ops.push(...(change.extraOps ?? []));
    const now = Date.now();
    for (const e of change.events ?? []) {
      const text = JSON.stringify({ ...e, at: now, leaderToken: fence?.token ?? 0 } satisfies ServiceEvent);
      ops.push({ cmd: 'LPUSH_CAPPED', key: this.keys.serviceEventLog, value: text, cap: SERVICE_EVENT_HISTORY });
      ops.push({ cmd: 'PUBLISH', channel: this.keys.serviceEvents, message: text });
    }
    ops.push({ cmd: 'PUBLISH', channel: this.keys.servicesChanged, message: servicesChangedMessage(version, name) });
    return ops;
  }
}

/**
 * A cell told its desired hash changed is told once per commit: the last of identical notices
 * stays (after every write of the commit), the others go. A batch of 200 services tearing down or
 * starting on the same cells otherwise sent that cell one notice per instance, and each made it
 * read its whole desired hash again.
 */
function dropRepeatedNotifies(ops: CasOp[]): void {
  const last = new Map<string, number>();
  ops.forEach((op, i) => {
    if (op.cmd === 'PUBLISH' && op.message === NOTIFY_DESIRED) last.set(op.channel, i);
  });
  let w = 0;
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i] as CasOp;
    if (op.cmd === 'PUBLISH' && op.message === NOTIFY_DESIRED && last.get(op.channel) !== i) continue;
    ops[w++] = op;
  }
  ops.length = w;
}
