/**
 * Fakes for the fencing unit tests: an in-memory service store, a fixed cell view,
 * a history that keeps steps in an array, and fencing steps that log every effect in order and
 * can be told to fail. No Redis, no cells: the tests prove the order of effects in milliseconds.
 */
import type { ActualInstance } from '../../../protocol/cell-protocol';
import { keyLayout } from '../../../protocol/keys';
import type { LeaderFence } from '../../../control/leader/fenced-commit';
import type { CellSnapshot } from '../../../control/services/cell-directory';
import type { ServiceChange } from '../../../control/services/service-store';
import type { InstanceRecord, ServiceRecord } from '../../../control/services/service-types';
import { ErrorCode, SfError } from '../../../common/errors';
import type { FencingStep, FencingStepInput } from '../../../control/failover/fencing-history';
import type { FencingSteps } from '../../../control/failover/fencing-steps';
import type { OrderResult } from '../../../protocol/cell-protocol';
import { DEFAULT_FAILOVER_OPTIONS } from '../../../control/failover/failover-options';

export const FENCE: LeaderFence = { lockKey: 'sf:leader', tokenKey: 'sf:leader:token', holder: 'c|7', token: 7 };

export const FAST_OPTIONS = {
  ...DEFAULT_FAILOVER_OPTIONS,
  catchUpTimeoutMs: 200,
  rejoinTimeoutMs: 200,
  commitCheckTimeoutMs: 50,
};

export function instance(
  id: string,
  cell: string,
  role: 'primary' | 'replica',
  over: Partial<InstanceRecord> = {},
): InstanceRecord {
  return { id, cell, zone: cell, role, epoch: 1, generation: 0, specWritten: true, placedAt: 0, ...over };
}

export function service(over: Partial<ServiceRecord> = {}): ServiceRecord {
  return {
    name: 'cache',
    engine: 'redis',
    replicas: 1,
    durability: 'sync',
    volume: { sizeMb: 64 },
    fencing: { policy: 'auto' },
    routerGroup: 'default',
    routerGroupGuid: 'g1',
    port: 16000,
    status: 'running',
    message: null,
    epoch: 1,
    instances: [instance('cache-0', 'cell-1', 'primary'), instance('cache-1', 'cell-2', 'replica')],
    nextIndex: 2,
    leaderToken: 1,
    createdAt: 0,
    updatedAt: 0,
    ...over,
  };
}

export class FakeStore {
  readonly keys = keyLayout();
  readonly writes: ServiceRecord[] = [];
  constructor(public rec: ServiceRecord | null) {}

  async mustGet(name: string): Promise<ServiceRecord> {
    if (!this.rec || this.rec.name !== name)
      throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
    return structuredClone(this.rec);
  }

  async change<T>(
    _name: string,
    _fence: LeaderFence | null,
    decide: (current: ServiceRecord | null) => Promise<{ change: ServiceChange; result: T } | { done: T }>,
  ): Promise<T> {
    const decision = await decide(this.rec ? structuredClone(this.rec) : null);
    if ('done' in decision) return decision.done;
    this.rec = decision.change.record;
    if (this.rec) this.writes.push(structuredClone(this.rec));
    return decision.result;
  }
}

/** Every instance of `rec` running on an alive cell, unless listed in `down`. */
export class FakeCells {
  alive = new Set<string>();
  states = new Map<string, ActualInstance['state']>();
  /** cell -> advertised host; a cell listed here has a registration record, others none. */
  hosts = new Map<string, string>();
  constructor(private readonly store: FakeStore) {}

  private record(name: string): CellSnapshot['record'] {
    const host = this.hosts.get(name);
    if (host === undefined) return null;
    return {
      name,
      zone: name,
      capacityMb: 4096,
      usedMb: 0,
      host,
      executors: ['process'],
      engines: ['redis'],
      portRange: { from: 7000, to: 7099 },
      instances: 0,
      startedAt: 0,
      heartbeatAt: 0,
      heartbeatTtlMs: 1000,
    };
  }

  async snapshot(): Promise<Map<string, CellSnapshot>> {
    const out = new Map<string, CellSnapshot>();
    for (const inst of this.store.rec?.instances ?? []) {
      const cell = out.get(inst.cell) ?? {
        name: inst.cell,
        alive: this.alive.size === 0 || this.alive.has(inst.cell),
        record: this.record(inst.cell),
        actual: new Map<string, ActualInstance>(),
      };
      cell.actual.set(inst.id, {
        instanceId: inst.id,
        service: 'cache',
        engine: 'redis',
        executor: 'process',
        state: this.states.get(inst.id) ?? 'running',
        generation: inst.generation,
        pid: 1,
        host: '127.0.0.1',
        port: 7000 + Number(inst.id.split('-').pop()),
        role: inst.role,
        epoch: inst.epoch,
        position: '100',
        positionValue: '100',
        healthy: true,
        leaseHeld: null,
        volumePresent: true,
        volumeSizeMb: 64,
        lastError: null,
        updatedAt: 0,
      });
      out.set(inst.cell, cell);
    }
    // Cells with no instance of the service still count as peers (or as sharing a host).
    for (const [name] of this.hosts)
      if (!out.has(name))
        out.set(name, { name, alive: true, record: this.record(name), actual: new Map<string, ActualInstance>() });
    return out;
  }
}

export class FakeHistory {
  readonly steps: FencingStep[] = [];
  async record(
    fence: LeaderFence,
    op: { operation: string; trigger: string; service: string },
    input: FencingStepInput,
  ): Promise<FencingStep> {
    const step = { ...op, ...input, at: Date.now(), leaderToken: fence.token };
    this.steps.push(step);
    return step;
  }
  async list(): Promise<FencingStep[]> {
    return [...this.steps].reverse();
  }
}

const ok = (type: OrderResult['type'], data: Record<string, unknown> = {}): OrderResult => ({
  orderId: 'o',
  type,
  cell: 'c',
  ok: true,
  data,
  finishedAt: 0,
});
const refused = (type: OrderResult['type'], message: string): OrderResult => ({
  orderId: 'o',
  type,
  cell: 'c',
  ok: false,
  error: { code: ErrorCode.OrderFailed, message },
  finishedAt: 0,
});

/** Which step misbehaves: `throw` (an exception), `refuse` (ok: false) or `silent` (no answer). */
export type Failure = 'throw' | 'refuse' | 'silent';

/** Fencing steps that log each effect (`publish:fenced:cache-0`, `shoot:cache-0`, ...). */
export class FakeSteps {
  readonly log: string[] = [];
  fail: Partial<Record<'publish' | 'shoot' | 'floor' | 'promote' | 'stop' | 'pause' | 'rejoin' | 'commit', Failure>> =
    {};
  /** Whether the engine can pause writes (Redis can); otherwise a pause is refused as unsupported. */
  canPause = false;
  /** Whether a clean stop reports where it left the data (PostgreSQL does), as `positionValue`. */
  stopReportsPosition = true;
  /** Per pause order: whether the record marked the primary fenced when it was sent. */
  readonly pausedWhileMarked: boolean[] = [];
  /** Positions per instance, for the catch-up and the choice. */
  positions = new Map<string, bigint>();
  /** How far an instance's position moves on after each read (a replica catching up). */
  advance = new Map<string, bigint>();
  /** Instances whose position cannot be read (an engine killed a moment ago). */
  readonly silent = new Set<string>();

  constructor(private readonly store: FakeStore) {}

  private answer(
    key: keyof FakeSteps['fail'],
    type: OrderResult['type'],
    entry: string,
    data = {},
  ): OrderResult | undefined {
    this.log.push(entry);
    const f = this.fail[key];
    if (f === 'throw') throw new Error(`${entry} exploded`);
    if (f === 'refuse') return refused(type, `${entry} refused`);
    if (f === 'silent') return undefined;
    return ok(type, data);
  }

  readonly steps: FencingSteps = {
    routeFence: {
      publish: async (rec) => {
        const fenced = rec.instances.filter((i) => i.fenced).map((i) => i.id);
        const primary = rec.instances.find((i) => i.role === 'primary' && !i.fenced)?.id ?? 'none';
        this.log.push(`publish:primary=${primary}${fenced.length ? `:fenced=${fenced.join(',')}` : ''}`);
        if (this.fail.publish === 'throw') throw new Error('route store unavailable');
        return this.log.length;
      },
      awaitRouters: async (_rec, version) => {
        this.log.push('await-routers');
        return { ok: true, version, routers: 1, lagging: [], waitedMs: 0 };
      },
    },
    shoot: { shoot: async (_cell, id) => this.answer('shoot', 'fence', `shoot:${id}`, { wasRunning: true }) },
    leaseFloor: {
      raise: async (id, epoch) => {
        this.log.push(`floor:${id}:${epoch}`);
        if (this.fail.floor === 'throw') throw new Error('lease script failed');
        return epoch;
      },
    },
    networkFence: {
      cut: async (cell) => this.answer('shoot', 'fence-network', `cut:${cell}`),
      lift: async (cell) => this.answer('shoot', 'unfence-network', `lift:${cell}`),
    },
    promote: {
      position: async (_cell, id) => {
        if (this.silent.has(id)) return null;
        const now = this.positions.get(id) ?? 100n;
        this.positions.set(id, now + (this.advance.get(id) ?? 0n));
        return now;
      },
      promote: async (_cell, id, epoch) =>
        this.answer('promote', 'promote', `promote:${id}:${epoch}`, { positionValue: '100' }),
    },
    rejoin: {
      repoint: async (_cell, id) => this.answer('rejoin', 'repoint', `repoint:${id}`),
      stop: async (_cell, id) =>
        this.answer(
          'stop',
          'stop',
          `stop:${id}`,
          this.stopReportsPosition ? { positionValue: String(this.positions.get(id) ?? 100n) } : {},
        ),
      pauseWrites: async (_cell, id) => {
        this.pausedWhileMarked.push(this.store.rec?.instances.find((i) => i.id === id)?.fenced !== undefined);
        if (!this.canPause) {
          this.log.push(`pause-unsupported:${id}`);
          return {
            ...refused('pause-writes', `${id} cannot pause`),
            error: { code: ErrorCode.EngineUnsupported, message: `${id} cannot pause` },
          };
        }
        return this.answer('pause', 'pause-writes', `pause:${id}`, {
          paused: true,
          positionValue: String(this.positions.get(id) ?? 100n),
        });
      },
      awaitReplica: async (_cell, id, generation) => {
        this.log.push(`await-replica:${id}:${generation}`);
        return this.fail.rejoin
          ? { ok: false, message: `${id} did not come back` }
          : { ok: true, message: `${id} is a replica` };
      },
      commitCheck: async (_cell, id) => this.answer('commit', 'commit-check', `commit-check:${id}`),
    },
  };

  /** Index of the first log entry starting with `prefix`; -1 when absent. */
  at(prefix: string): number {
    return this.log.findIndex((e) => e.startsWith(prefix));
  }
}

export function storeRecord(store: FakeStore): ServiceRecord {
  if (!store.rec) throw new Error('no record');
  return store.rec;
}
