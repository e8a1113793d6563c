/**
 * Prometheus metrics of one cell (`sf cell --metrics-listen`): the instances it runs as it last
 * reported them (state, health, replication position), its capacity, and how long its orders
 * take. Instance gauges are filled at scrape time from the agent's last reports.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { ErrorCode, PROCESS_METRICS_SETTINGS, SfError, bearerAccepted, bearerRequiredBody } from '../common';
import type { ActualInstance } from '../protocol';

/** What the collectors read from the agent. */
export interface CellMetricsSource {
  reports(): Iterable<ActualInstance>;
  capacityMb: number;
  usedMb(): number;
}

/** Orders range from a position read (ms) to a PostgreSQL promote or rewind (seconds). */
const ORDER_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class CellMetrics {
  readonly registry = new Registry();
  private readonly orders: Counter<'type' | 'outcome'>;
  private readonly orderSeconds: Histogram<'type'>;
  private readonly copiedBytes: Counter;

  constructor(source: CellMetricsSource) {
    collectDefaultMetrics({ register: this.registry, prefix: 'sf_cell_', ...PROCESS_METRICS_SETTINGS });
    const registers = [this.registry];
    this.orders = new Counter({
      name: 'sf_cell_orders_total',
      help: 'Orders this cell carried out (fence, promote, position...), by type and outcome (ok, failed).',
      labelNames: ['type', 'outcome'],
      registers,
    });
    this.orderSeconds = new Histogram({
      name: 'sf_cell_order_duration_seconds',
      help: 'Time from taking an order off the queue to storing its result.',
      labelNames: ['type'],
      buckets: ORDER_BUCKETS,
      registers,
    });
    const labelNames = ['service', 'instance', 'role', 'engine'] as const;
    const up: Gauge<(typeof labelNames)[number] | 'state'> = new Gauge({
      name: 'sf_cell_instance_state',
      help: 'The state of each instance on this cell: 1 for its current state label (running, starting, failed, fenced, stopped).',
      labelNames: [...labelNames, 'state'],
      registers,
      collect: () => {
        up.reset();
        healthy.reset();
        position.reset();
        epoch.reset();
        volumeUsed.reset();
        volumeSize.reset();
        volumeFull.reset();
        for (const a of source.reports()) {
          const labels = { service: a.service, instance: a.instanceId, role: a.role, engine: a.engine };
          up.set({ ...labels, state: a.degraded ? 'degraded' : a.state }, 1);
          healthy.set(labels, a.state === 'running' && a.healthy === true && !a.degraded ? 1 : 0);
          epoch.set(labels, a.epoch);
          if (a.positionValue && /^\d+$/.test(a.positionValue)) position.set(labels, Number(a.positionValue));
          if (!a.volumePresent) continue;
          volumeSize.set(labels, a.volumeSizeMb);
          volumeFull.set(labels, a.volumeFull ? 1 : 0);
          if (typeof a.volumeUsedMb === 'number') volumeUsed.set(labels, a.volumeUsedMb);
        }
      },
    });
    // Registered after the gauge whose collector fills them, so a scrape reads fresh values.
    const healthy = new Gauge({
      name: 'sf_cell_instance_healthy',
      help: '1 when the instance runs and its last health probe succeeded.',
      labelNames,
      registers,
    });
    const epoch = new Gauge({ name: 'sf_cell_instance_epoch', help: 'The instance epoch.', labelNames, registers });
    const position = new Gauge({
      name: 'sf_cell_instance_replication_position',
      help: 'Replication position (Redis offset, PostgreSQL LSN as bytes); a replica lags its primary by the difference.',
      labelNames,
      registers,
    });
    const volumeUsed = new Gauge({
      name: 'sf_cell_volume_used_mb',
      help: 'Measured disk usage of each volume (du, every --volume-check-ms), MiB rounded up.',
      labelNames,
      registers,
    });
    const volumeSize = new Gauge({
      name: 'sf_cell_volume_size_mb',
      help: "Each volume's size limit (the service's volume.size_mb).",
      labelNames,
      registers,
    });
    const volumeFull = new Gauge({
      name: 'sf_cell_volume_full',
      help: '1 while a volume is full and its engine refuses writes (docs/volumes.md).',
      labelNames,
      registers,
    });
    this.copiedBytes = new Counter({
      name: 'sf_cell_copy_received_bytes_total',
      help: 'Bytes of the volume moves and snapshot copies this cell received from peer cells (completed copy orders).',
      registers,
    });
    new Gauge({
      name: 'sf_cell_capacity_mb',
      help: 'Volume capacity this cell offers to placement.',
      registers,
      collect() {
        this.set(source.capacityMb);
      },
    });
    new Gauge({
      name: 'sf_cell_used_mb',
      help: 'Volume size of the instances on this cell, desired or on disk.',
      registers,
      collect() {
        this.set(source.usedMb());
      },
    });
  }

  observeCopied(bytes: number): void {
    if (bytes > 0) this.copiedBytes.inc(bytes);
  }

  observeOrder(type: string, ok: boolean, seconds: number): void {
    this.orders.inc({ type, outcome: ok ? 'ok' : 'failed' });
    this.orderSeconds.observe({ type }, seconds);
  }
}

/**
 * `/metrics` and `/health` on their own port, like the router's admin endpoint: bound to
 * loopback unless told otherwise, read only, no secret in them (docs/cells.md). `/metrics` needs
 * `authorization: Bearer token`; `/health` answers without one, for probes.
 */
export function startCellMetricsServer(
  metrics: CellMetrics,
  host: string,
  port: number,
  token: string,
): Promise<{ port: number; close(): Promise<void> }> {
  if (!token) throw new SfError(ErrorCode.InvalidRequest, 'cell metrics need a token', 'token');
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/metrics' && !bearerAccepted(req.headers.authorization, token)) {
      res
        .writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer realm="sf-cell"' })
        .end(bearerRequiredBody('cell metrics', 'docs/cells.md, --metrics-listen'));
      return;
    }
    if (req.method === 'GET' && path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        (err: Error) =>
          res
            .writeHead(500, { 'content-type': 'application/json' })
            .end(JSON.stringify({ error: { code: ErrorCode.Metrics, message: err.message } })),
      );
      return;
    }
    if (req.method === 'GET' && path === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        error: { code: ErrorCode.NotFound, message: `no endpoint ${req.method ?? ''} ${path.slice(0, 100)}` },
      }),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) =>
      reject(
        new SfError(
          ErrorCode.ListenFailed,
          `cell metrics cannot listen on ${host}:${port}: ${err.message}`,
          'metrics-listen',
        ),
      ),
    );
    server.listen(port, host, () => {
      const address = server.address();
      resolve({
        port: typeof address === 'object' && address ? address.port : port,
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}
