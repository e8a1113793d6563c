/**
 * Many simulated cells in one process, speaking the real cell protocol (protocol/cell-protocol.ts,
 * docs/cells.md) against the real state Redis: registration with a TTL heartbeat, the desired
 * hash (notify + poll), actual reports with `actual` events, orders with results, and primary
 * lease claims through protocol/lease.ts (the registration heartbeat is every primary's lease). Instances exist only as reported state: nothing runs.
 *
 * It is a benchmark tool, so control's cost at 1,000 cells and 10,000 services can be measured on
 * one machine. It is never used by tests that claim engines work. Its Redis traffic mirrors the
 * real agent's cadence (heartbeat, desired poll, periodic full report, a lease claim when a
 * primary starts or is promoted and a release when it fails), so what control and the store see is what real cells would make them see.
 */
import type { Redis } from 'ioredis';
import { createRedis } from '../../common';
import { defaultHeartbeatMs } from '../../cell/cell-agent-defaults';
import {
  keyLayout,
  ORDER_RESULT_TTL_MS,
  claimLease,
  heartbeatCell,
  releaseLease,
  type ActualInstance,
  type CellEvent,
  type CellRecord,
  type InstanceSpec,
  type KeyLayout,
  type Order,
  type OrderResult,
} from '../../protocol';

export interface CellSimulatorOptions {
  redisUrl: string;
  /** @default 'sf:' */
  keyPrefix?: string;
  /** How many cells. @default 10 */
  cells?: number;
  /** Cell names are `${namePrefix}${index}`. @default 'sim-' */
  namePrefix?: string;
  /** Zones cells are spread over, round robin. @default 3 */
  zones?: number;
  /** Capacity each cell offers. @default 1048576 (1 TB: capacity is not what is measured) */
  capacityMb?: number;
  /** Like `sf cell --heartbeat-ms`. @default half of heartbeatTtlMs (1500), as the agent */
  heartbeatMs?: number;
  /** Like `sf cell --heartbeat-ttl-ms`. @default 3000 */
  heartbeatTtlMs?: number;
  /** The agent re-reads its desired hash this often besides notifications. @default 30000 */
  desiredPollMs?: number;
  /** The agent rewrites every report this often. @default 10000 */
  fullReportMs?: number;
  /** Simulated start time of an instance (starting → running). @default 20 */
  startMs?: number;
  /** Called when a cell first sees an instance's spec (the moment it is scheduled). */
  onScheduled?: (instanceId: string, service: string, at: number) => void;
  /** Called when an instance reports running. */
  onRunning?: (instanceId: string, service: string, at: number) => void;
  /** Called after each order, with its result. */
  onOrder?: (order: Order, result: OrderResult) => void;
}

export const DEFAULT_CELL_SIMULATOR_OPTIONS = {
  keyPrefix: 'sf:',
  cells: 10,
  namePrefix: 'sim-',
  zones: 3,
  capacityMb: 1_048_576,
  heartbeatTtlMs: 3_000,
  desiredPollMs: 30_000,
  fullReportMs: 10_000,
  startMs: 20,
};

interface SimInstance {
  spec: InstanceSpec;
  actual: ActualInstance;
  /** The desired JSON last seen, so an unchanged spec is not parsed again. */
  raw: string;
  fenced: boolean;
}

interface SimCell {
  name: string;
  index: number;
  zone: string;
  host: string;
  nextPort: number;
  portRange: { from: number; to: number };
  startedAt: number;
  alive: boolean;
  instances: Map<string, SimInstance>;
  reconciling: boolean;
  again: boolean;
}

/** Counters of what the simulator did, for the benchmark's report. */
export interface SimulatorStats {
  cells: number;
  instances: number;
  running: number;
  ordersHandled: number;
  leaseClaims: number;
  leaseRefusals: number;
}

export class CellSimulator {
  private readonly opts: Required<Omit<CellSimulatorOptions, 'onScheduled' | 'onRunning' | 'onOrder'>> &
    Pick<CellSimulatorOptions, 'onScheduled' | 'onRunning' | 'onOrder'>;
  private readonly keys: KeyLayout;
  private redis: Redis | null = null;
  private sub: Redis | null = null;
  private orderConn: Redis | null = null;
  private readonly cells = new Map<string, SimCell>();
  private readonly byNotify = new Map<string, SimCell>();
  private readonly byOrders = new Map<string, SimCell>();
  private timers: NodeJS.Timeout[] = [];
  private stopped = false;
  private orderLoopDone: Promise<void> = Promise.resolve();
  private readonly stats = { ordersHandled: 0, leaseClaims: 0, leaseRefusals: 0 };
  /** Reports whose last write failed, rewritten by the periodic full report. */
  private readonly unsynced = new Set<string>();

  constructor(options: CellSimulatorOptions) {
    const ttl = options.heartbeatTtlMs ?? DEFAULT_CELL_SIMULATOR_OPTIONS.heartbeatTtlMs;
    this.opts = {
      ...DEFAULT_CELL_SIMULATOR_OPTIONS,
      ...options,
      heartbeatMs: options.heartbeatMs ?? defaultHeartbeatMs(ttl),
    };
    this.keys = keyLayout(this.opts.keyPrefix);
    for (let i = 1; i <= this.opts.cells; i++) {
      const name = `${this.opts.namePrefix}${i}`;
      const from = 20_000 + ((i - 1) % 400) * 100;
      const cell: SimCell = {
        name,
        index: i,
        zone: `z${((i - 1) % this.opts.zones) + 1}`,
        // A distinct loopback address per cell, so two cells never report the same host:port.
        host: `127.${1 + ((i >> 16) & 0xff)}.${(i >> 8) & 0xff}.${i & 0xff}`,
        nextPort: from,
        portRange: { from, to: from + 99 },
        startedAt: Date.now(),
        alive: true,
        instances: new Map(),
        reconciling: false,
        again: false,
      };
      this.cells.set(name, cell);
      this.byNotify.set(this.keys.cell(name).notify, cell);
      this.byOrders.set(this.keys.cell(name).orders, cell);
    }
  }

  cellNames(): string[] {
    return [...this.cells.keys()];
  }

  async start(): Promise<void> {
    this.redis = createRedis(this.opts.redisUrl, { connectionName: 'sf-cell-simulator' });
    this.sub = createRedis(this.opts.redisUrl, { connectionName: 'sf-cell-simulator:notify' });
    this.orderConn = createRedis(this.opts.redisUrl, {
      connectionName: 'sf-cell-simulator:orders',
      maxRetriesPerRequest: null,
    });
    // Stale reports from an earlier run would describe instances nobody simulates now.
    const clear = this.redis.pipeline();
    for (const name of this.cells.keys()) clear.del(this.keys.cell(name).actual);
    await clear.exec();
    await this.heartbeatAll();
    const hello = this.redis.pipeline();
    for (const cell of this.cells.values())
      hello.publish(
        this.keys.cellEvents,
        JSON.stringify({ type: 'registered', cell: cell.name, record: this.record(cell) } satisfies CellEvent),
      );
    await hello.exec();
    this.sub.on('message', (channel: string) => {
      const cell = this.byNotify.get(channel);
      if (cell) this.requestReconcile(cell);
    });
    await this.sub.subscribe(...this.byNotify.keys());
    // Each timer spreads its cells over its period, as independent hosts would be.
    this.spread(this.opts.heartbeatMs, (cells) => void this.heartbeat(cells));
    this.spread(this.opts.desiredPollMs, (cells) => cells.forEach((c) => this.requestReconcile(c)));
    this.spread(this.opts.fullReportMs, (cells) => cells.forEach((c) => this.reportAll(c)));
    for (const cell of this.cells.values()) this.requestReconcile(cell);
    this.orderLoopDone = this.orderLoop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.orderConn?.disconnect();
    await this.orderLoopDone;
    this.sub?.disconnect();
    if (this.redis) {
      const bye = this.redis.pipeline();
      for (const name of this.cells.keys()) bye.del(this.keys.cell(name).registration);
      await bye.exec().catch(() => undefined);
      await this.redis.quit().catch(() => undefined);
    }
  }

  snapshotStats(): SimulatorStats {
    let instances = 0;
    let running = 0;
    for (const cell of this.cells.values()) {
      instances += cell.instances.size;
      for (const i of cell.instances.values()) if (i.actual.state === 'running') running++;
    }
    return { cells: this.cells.size, instances, running, ...this.stats };
  }

  /** The instance's engine dies: reported failed, its lease claim withdrawn. */
  failInstance(instanceId: string): boolean {
    for (const cell of this.cells.values()) {
      const inst = cell.instances.get(instanceId);
      if (!inst) continue;
      if (inst.actual.leaseHeld && this.redis)
        void releaseLease(this.redis, this.keys, instanceId, inst.actual.epoch, this.holder(cell)).catch(
          () => undefined,
        );
      this.setActual(cell, inst, {
        state: 'failed',
        healthy: null,
        pid: null,
        leaseHeld: inst.spec.lease ? false : null,
        lastError: { code: 'SF_ERR_INSTANCE_EXITED', message: 'simulated engine exit' },
      });
      return true;
    }
    return false;
  }

  /** Where an instance is simulated, if anywhere. */
  cellOf(instanceId: string): string | undefined {
    for (const cell of this.cells.values()) if (cell.instances.has(instanceId)) return cell.name;
    return undefined;
  }

  private spread(periodMs: number, run: (cells: SimCell[]) => void): void {
    const slices = Math.max(1, Math.min(10, this.cells.size));
    const all = [...this.cells.values()];
    for (let s = 0; s < slices; s++) {
      const mine = all.filter((_, i) => i % slices === s);
      const start = setTimeout(
        () => {
          if (this.stopped) return;
          this.timers.push(setInterval(() => run(mine.filter((c) => c.alive)), periodMs));
        },
        Math.floor((periodMs * s) / slices),
      );
      this.timers.push(start);
    }
  }

  private record(cell: SimCell): CellRecord {
    let usedMb = 0;
    for (const i of cell.instances.values()) usedMb += i.spec.volume.sizeMb;
    return {
      name: cell.name,
      zone: cell.zone,
      capacityMb: this.opts.capacityMb,
      usedMb,
      host: cell.host,
      executors: ['process'],
      engines: ['redis', 'postgres', 'tcp'],
      portRange: cell.portRange,
      instances: cell.instances.size,
      startedAt: cell.startedAt,
      heartbeatAt: Date.now(),
      heartbeatTtlMs: this.opts.heartbeatTtlMs,
    };
  }

  private async heartbeatAll(): Promise<void> {
    await this.heartbeat([...this.cells.values()]);
  }

  /**
   * The agent's heartbeat (protocol/cell-heartbeat.ts): one EVALSHA that renews the registration,
   * and only when it had expired writes it again and adds the cell to the set (the agent's check
   * for a wiped store). Simulated instances hold no lease, so no floor is read.
   */
  private async heartbeat(cells: SimCell[]): Promise<void> {
    if (!this.redis || this.stopped) return;
    const redis = this.redis;
    const ttl = this.opts.heartbeatTtlMs;
    await Promise.all(
      cells.map(async (cell) => {
        try {
          await heartbeatCell(redis, this.keys, cell.name, JSON.stringify(this.record(cell)), ttl, []);
        } catch {
          // The next heartbeat tries again.
        }
      }),
    );
  }

  private requestReconcile(cell: SimCell): void {
    if (this.stopped || !cell.alive) return;
    if (cell.reconciling) {
      cell.again = true;
      return;
    }
    cell.reconciling = true;
    void this.reconcile(cell)
      .catch(() => undefined)
      .finally(() => {
        cell.reconciling = false;
        if (cell.again) {
          cell.again = false;
          this.requestReconcile(cell);
        }
      });
  }

  /** The agent's convergence: start what is new or has a higher generation, stop what left. */
  private async reconcile(cell: SimCell): Promise<void> {
    if (!this.redis) return;
    const raw = await this.redis.hgetall(this.keys.cell(cell.name).desired);
    const now = Date.now();
    for (const [id, json] of Object.entries(raw)) {
      const known = cell.instances.get(id);
      if (known && known.raw === json) continue;
      let spec: InstanceSpec;
      try {
        spec = JSON.parse(json) as InstanceSpec;
      } catch {
        continue;
      }
      if (!known) {
        const inst: SimInstance = { spec, raw: json, fenced: false, actual: this.freshActual(cell, spec) };
        cell.instances.set(id, inst);
        this.opts.onScheduled?.(id, spec.service, now);
        this.report(cell, inst);
        this.startLater(cell, inst);
        continue;
      }
      known.raw = json;
      const restart = spec.generation > known.spec.generation || known.actual.state === 'stopped';
      known.spec = spec;
      if (spec.epoch > known.actual.epoch) known.actual.epoch = spec.epoch;
      if (restart) {
        known.fenced = false;
        this.setActual(cell, known, { state: 'starting', generation: spec.generation, lastError: null });
        this.startLater(cell, known);
      }
    }
    for (const [id, inst] of cell.instances) {
      if (id in raw || inst.actual.state === 'stopped') continue;
      this.setActual(cell, inst, { state: 'stopped', healthy: null, pid: null, leaseHeld: null });
    }
  }

  private freshActual(cell: SimCell, spec: InstanceSpec): ActualInstance {
    return {
      instanceId: spec.instanceId,
      service: spec.service,
      engine: spec.engine,
      executor: 'process',
      state: 'starting',
      generation: spec.generation,
      pid: null,
      host: cell.host,
      port: spec.port ?? this.allocatePort(cell),
      role: spec.role,
      epoch: spec.epoch,
      position: '0',
      positionValue: '0',
      healthy: null,
      leaseHeld: spec.lease ? false : null,
      volumePresent: true,
      volumeSizeMb: spec.volume.sizeMb,
      lastError: null,
      updatedAt: Date.now(),
    };
  }

  private allocatePort(cell: SimCell): number {
    const port = cell.nextPort;
    cell.nextPort = port >= 65_000 ? cell.portRange.from : port + 1;
    return port;
  }

  private startLater(cell: SimCell, inst: SimInstance): void {
    const t = setTimeout(() => {
      if (this.stopped || inst.actual.state !== 'starting') return;
      const generation = inst.spec.generation;
      void this.acquireLease(cell, inst).then((leaseHeld) => {
        if (inst.actual.state !== 'starting' || inst.spec.generation !== generation) return;
        this.setActual(cell, inst, {
          state: 'running',
          pid: 100_000 + cell.index,
          healthy: true,
          leaseHeld,
          role: inst.spec.role,
        });
        this.opts.onRunning?.(inst.spec.instanceId, inst.spec.service, Date.now());
      });
    }, this.opts.startMs);
    t.unref();
  }

  private holder(cell: SimCell): { cell: string; boot: number } {
    return { cell: cell.name, boot: cell.startedAt };
  }

  /** A primary claims its lease once, as it starts or is promoted; the heartbeat keeps it. */
  private async acquireLease(cell: SimCell, inst: SimInstance): Promise<boolean | null> {
    if (!inst.spec.lease || inst.spec.role !== 'primary' || !this.redis) return null;
    try {
      const res = await claimLease(this.redis, this.keys, inst.spec.instanceId, inst.actual.epoch, this.holder(cell));
      this.stats.leaseClaims++;
      if (!res.ok) this.stats.leaseRefusals++;
      return res.ok;
    } catch {
      return false;
    }
  }

  private setActual(cell: SimCell, inst: SimInstance, patch: Partial<ActualInstance>): void {
    Object.assign(inst.actual, patch, { updatedAt: Date.now() });
    this.report(cell, inst);
  }

  /** The agent's report: HSET into the actual hash, then an `actual` event. */
  private report(cell: SimCell, inst: SimInstance | null, instanceId?: string): void {
    if (!this.redis || this.stopped) return;
    const id = inst?.spec.instanceId ?? instanceId ?? '';
    const k = this.keys.cell(cell.name);
    const event: CellEvent = { type: 'actual', cell: cell.name, instanceId: id, actual: inst?.actual ?? null };
    const p = this.redis.pipeline();
    if (inst) p.hset(k.actual, id, JSON.stringify(inst.actual));
    else p.hdel(k.actual, id);
    p.publish(this.keys.cellEvents, JSON.stringify(event));
    void p
      .exec()
      .then((res) => {
        if (res?.some(([err]) => err)) this.unsynced.add(id);
        else this.unsynced.delete(id);
      })
      .catch(() => this.unsynced.add(id));
  }

  /** Like the agent's periodic full report: only what changed since, or failed to be written. */
  private reportAll(cell: SimCell): void {
    for (const inst of cell.instances.values()) if (this.unsynced.has(inst.spec.instanceId)) this.report(cell, inst);
  }

  /** One BRPOP over every cell's order list: the order goes to the cell whose list it came from. */
  private async orderLoop(): Promise<void> {
    const lists = [...this.byOrders.keys()];
    while (!this.stopped && this.orderConn) {
      let popped: [string, string] | null;
      try {
        popped = await this.orderConn.brpop(...lists, 1);
      } catch {
        if (this.stopped) return;
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (!popped) continue;
      const cell = this.byOrders.get(popped[0]);
      if (!cell || !cell.alive) continue;
      let order: Order;
      try {
        order = JSON.parse(popped[1]) as Order;
      } catch {
        continue;
      }
      void this.execute(cell, order);
    }
  }

  private async execute(cell: SimCell, order: Order): Promise<void> {
    const result: OrderResult = { orderId: order.orderId, type: order.type, cell: cell.name, ok: true, finishedAt: 0 };
    const inst = 'instanceId' in order ? cell.instances.get(order.instanceId) : undefined;
    if ('instanceId' in order && !inst && order.type !== 'delete-volume') {
      result.ok = false;
      result.error = { code: 'SF_ERR_INSTANCE_NOT_FOUND', message: `no instance ${order.instanceId} on ${cell.name}` };
    } else if (inst) {
      switch (order.type) {
        case 'promote':
          if (order.epoch < inst.actual.epoch) {
            result.ok = false;
            result.error = { code: 'SF_ERR_STALE_EPOCH', message: `epoch ${order.epoch} < ${inst.actual.epoch}` };
            break;
          }
          inst.spec = { ...inst.spec, role: 'primary', epoch: order.epoch };
          this.setActual(cell, inst, { role: 'primary', epoch: order.epoch });
          this.setActual(cell, inst, { leaseHeld: await this.acquireLease(cell, inst) });
          result.data = { role: 'primary', position: inst.actual.position, positionValue: inst.actual.positionValue };
          break;
        case 'fence':
          inst.fenced = true;
          result.data = { wasRunning: inst.actual.state === 'running' };
          this.setActual(cell, inst, { state: 'fenced', healthy: null, pid: null, leaseHeld: false });
          break;
        case 'stop':
          this.setActual(cell, inst, { state: 'stopped', healthy: null, pid: null, leaseHeld: null });
          break;
        case 'position':
          result.data = {
            role: inst.actual.role,
            position: inst.actual.position,
            positionValue: inst.actual.positionValue,
          };
          break;
        case 'repoint':
          result.data = { primary: order.primary };
          break;
        case 'credentials':
          result.data = { version: order.credentials.version };
          break;
        case 'delete-volume':
          cell.instances.delete(order.instanceId);
          this.report(cell, null, order.instanceId);
          break;
        default:
          break;
      }
    }
    if (order.type === 'delete-volume' && !inst) this.report(cell, null, order.instanceId);
    result.finishedAt = Date.now();
    this.stats.ordersHandled++;
    this.opts.onOrder?.(order, result);
    if (!this.redis) return;
    const event: CellEvent = { type: 'order-result', cell: cell.name, result };
    await this.redis
      .multi()
      .set(this.keys.orderResult(order.orderId), JSON.stringify(result), 'PX', ORDER_RESULT_TTL_MS)
      .publish(this.keys.cellEvents, JSON.stringify(event))
      .exec()
      .catch(() => undefined);
  }
}
