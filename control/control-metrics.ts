/**
 * Prometheus metrics of one control process (`GET /metrics`, read scope): convergence passes,
 * fencing steps, leadership, and — read from the store and the cells' reports at scrape time —
 * every instance's health and replication lag. Counters are fed by hooks the service plane
 * passes down; nothing on a request path awaits prom-client.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { PROCESS_METRICS_SETTINGS } from '../common';
import type { FencingHistoryLike } from './failover/fencing-coordinator';
import type { CellSnapshot } from './services/cell-directory';
import type { ServiceRecord } from './services/service-types';

/** What the scrape-time collectors read: the service records and the cells' reports. */
export interface InstanceSource {
  services(): Promise<ServiceRecord[]>;
  cells(): Promise<ReadonlyMap<string, CellSnapshot>>;
}

/** Pass durations: a pass is milliseconds when idle, seconds while it fences or places. */
const PASS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const STEP_BUCKETS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60];

export class ControlMetrics {
  readonly registry = new Registry();
  private readonly passes: Counter<'outcome'>;
  private readonly passSeconds: Histogram;
  private readonly steps: Counter<'step' | 'outcome'>;
  private readonly stepSeconds: Histogram<'step'>;
  private readonly operations: Counter<'trigger'>;
  private readonly leaderChanges: Counter<'change'>;
  private readonly leader: Gauge;
  private readonly seenOperations = new Set<string>();
  private isLeader = false;

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'sf_control_', ...PROCESS_METRICS_SETTINGS });
    const registers = [this.registry];
    this.passes = new Counter({
      name: 'sf_control_reconcile_passes_total',
      help: 'Convergence passes of this control while leader, by outcome (ok, failed).',
      labelNames: ['outcome'],
      registers,
    });
    this.passSeconds = new Histogram({
      name: 'sf_control_reconcile_duration_seconds',
      help: 'Duration of a convergence pass over every service.',
      buckets: PASS_BUCKETS,
      registers,
    });
    this.steps = new Counter({
      name: 'sf_control_fencing_steps_total',
      help: 'Fencing steps recorded by this control, by step and outcome (docs/fencing.md).',
      labelNames: ['step', 'outcome'],
      registers,
    });
    this.stepSeconds = new Histogram({
      name: 'sf_control_fencing_step_duration_seconds',
      help: 'Time a fencing step took, from the previous step of its operation (or its start).',
      labelNames: ['step'],
      buckets: STEP_BUCKETS,
      registers,
    });
    this.operations = new Counter({
      name: 'sf_control_fencing_operations_total',
      help: 'Fencing operations (failover, fence, switchover...) started by this control, by trigger.',
      labelNames: ['trigger'],
      registers,
    });
    this.leaderChanges = new Counter({
      name: 'sf_control_leader_changes_total',
      help: 'Times this control became leader (elected) or stopped being leader (demoted).',
      labelNames: ['change'],
      registers,
    });
    this.leader = new Gauge({
      name: 'sf_control_leader',
      help: '1 while this control holds the leader lock.',
      registers,
      collect: () => this.leader.set(this.isLeader ? 1 : 0),
    });
  }

  /** Called after each convergence pass. */
  observePass(seconds: number, ok: boolean): void {
    this.passes.inc({ outcome: ok ? 'ok' : 'failed' });
    this.passSeconds.observe(seconds);
  }

  leaderChanged(elected: boolean): void {
    this.isLeader = elected;
    this.leaderChanges.inc({ change: elected ? 'elected' : 'demoted' });
  }

  /** Wraps a fencing history so that every recorded step is also counted and timed. */
  observeFencing(history: FencingHistoryLike): FencingHistoryLike {
    return {
      list: (service, limit) => history.list(service, limit),
      record: async (fence, op, input) => {
        const entry = await history.record(fence, op, input);
        if (!this.seenOperations.has(op.operation)) {
          // Bounded: operation ids only matter until their next step, seconds later.
          if (this.seenOperations.size > 1_000) this.seenOperations.clear();
          this.seenOperations.add(op.operation);
          this.operations.inc({ trigger: op.trigger });
        }
        this.steps.inc({ step: entry.step, outcome: entry.outcome });
        if (entry.durationMs !== undefined) this.stepSeconds.observe({ step: entry.step }, entry.durationMs / 1000);
        return entry;
      },
    };
  }

  /**
   * Adds per-instance health, replication lag and service epochs, read at each scrape. prom-client
   * collects every metric of a scrape concurrently, so the three gauges share one read of the
   * store and the cells, made by whichever collects first.
   */
  watchInstances(source: InstanceSource): void {
    type Sample = { labels: Record<string, string>; value: number };
    let pending: Promise<{ healthy: Sample[]; lag: Sample[]; epoch: Sample[] }> | null = null;
    const read = () => {
      if (!pending) {
        pending = instanceSamples(source);
        const clear = (): void => {
          pending = null;
        };
        pending.then(clear, clear);
      }
      return pending;
    };
    const gauge = (name: string, help: string, labelNames: string[], pick: 'healthy' | 'lag' | 'epoch'): void => {
      const g: Gauge = new Gauge({
        name,
        help,
        labelNames,
        registers: [this.registry],
        collect: async () => {
          g.reset();
          for (const s of (await read())[pick]) g.set(s.labels, s.value);
        },
      });
    };
    gauge(
      'sf_service_instance_healthy',
      "1 when the instance's cell reports it running and healthy, 0 otherwise (lost, failed, fenced, pending).",
      ['service', 'instance', 'cell', 'role'],
      'healthy',
    );
    gauge(
      'sf_service_replication_lag_bytes',
      "How far a replica's replication position is behind its primary's (Redis offset, PostgreSQL LSN bytes).",
      ['service', 'instance', 'cell'],
      'lag',
    );
    gauge('sf_service_epoch', "The service's primary epoch; it grows with every failover.", ['service'], 'epoch');
  }
}

/** One read of the store and the cells, as the samples of the three instance gauges. */
async function instanceSamples(source: InstanceSource) {
  type Sample = { labels: Record<string, string>; value: number };
  const out = { healthy: [] as Sample[], lag: [] as Sample[], epoch: [] as Sample[] };
  const [services, cells] = await Promise.all([source.services(), source.cells()]);
  for (const s of services) {
    out.epoch.push({ labels: { service: s.name }, value: s.epoch });
    const position = (id: string, cell: string): bigint | undefined => {
      const v = cells.get(cell)?.actual.get(id)?.positionValue;
      return v && /^\d+$/.test(v) ? BigInt(v) : undefined;
    };
    const primary = s.instances.find((i) => i.role === 'primary');
    const primaryAt = primary ? position(primary.id, primary.cell) : undefined;
    for (const i of s.instances) {
      const snap = cells.get(i.cell);
      const actual = snap?.alive ? snap.actual.get(i.id) : undefined;
      const ok = actual?.state === 'running' && actual.healthy === true && !actual.degraded;
      out.healthy.push({ labels: { service: s.name, instance: i.id, cell: i.cell, role: i.role }, value: ok ? 1 : 0 });
      const at = position(i.id, i.cell);
      if (i.role === 'replica' && primaryAt !== undefined && at !== undefined)
        out.lag.push({
          labels: { service: s.name, instance: i.id, cell: i.cell },
          value: Number(primaryAt > at ? primaryAt - at : 0n),
        });
    }
  }
  return out;
}
