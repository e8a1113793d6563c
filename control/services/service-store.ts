/**
 * Service records in Redis. Every write goes through one fenced, version-guarded script
 * (leader/fenced-commit.ts): API writes (create, mark for deletion) carry no fence, the leader's
 * writes (placement, desired specs, teardown) carry its token, so a deposed leader cannot
 * overwrite its successor's decisions. Control keeps nothing in memory that a restart would lose.
 */
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';
import { withFencedRetry, type FencedPlan, type LeaderFence } from '../leader/fenced-commit';
import type { CasOp } from '../state/cas-commit';
import type { KeyLayout } from '../../protocol';
import type { ServiceEvent, ServiceRecord } from './service-types';

/** Service events kept for `GET /v3/service_instances/:name/events` and operators. */
export const SERVICE_EVENT_HISTORY = 500;

export interface ServiceSnapshot {
  version: number;
  services: Map<string, ServiceRecord>;
}

/** What a leader (or API) change wants to write besides the record: cell specs, events. */
export interface ServiceChange {
  /** The new record, or null to remove it. */
  record: ServiceRecord | null;
  extraOps?: CasOp[];
  events?: Array<Omit<ServiceEvent, 'at' | 'leaderToken'>>;
}

export class ServiceStore {
  constructor(
    private readonly redis: Redis,
    readonly keys: KeyLayout,
  ) {}

  async snapshot(): Promise<ServiceSnapshot> {
    const res = await this.redis.multi().get(this.keys.servicesVersion).hgetall(this.keys.services).exec();
    const version = Number(res?.[0]?.[1] ?? 0);
    const raw = (res?.[1]?.[1] as Record<string, string> | null) ?? {};
    const services = new Map<string, ServiceRecord>();
    for (const [name, text] of Object.entries(raw)) services.set(name, JSON.parse(text) as ServiceRecord);
    return { version, services };
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
    return withFencedRetry(this.redis, fence, async (): Promise<FencedPlan<T>> => {
      const snapshot = await this.snapshot();
      const decision = await decide(snapshot.services.get(name) ?? null, snapshot);
      if ('done' in decision) return decision;
      return {
        guards: [{ key: this.keys.servicesVersion, expected: snapshot.version }],
        ops: this.ops(name, decision.change, fence),
        result: decision.result,
      };
    });
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

  private ops(name: string, change: ServiceChange, fence: LeaderFence | null): CasOp[] {
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
    ops.push({ cmd: 'PUBLISH', channel: this.keys.servicesChanged, message: name });
    return ops;
  }
}
