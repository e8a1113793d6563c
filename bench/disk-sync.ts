/**
 * What does disk sync cost? Redis SET through the router against three services that differ only
 * in `disk_sync` (always / interval / off: appendfsync always / everysec / no), one cell, no
 * replicas, every part real (state redis, control, router and cell processes). Modes are
 * interleaved over rounds so machine load hits each alike; the table gives median throughput and
 * latency per mode and the throughput as a ratio to `off`.
 *
 * Writes bench/results/disk-sync.json. `--quick` runs shorter rounds.
 */
import { Redis } from 'ioredis';
import { startServiceCluster } from '../test/helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../test/helpers/service-key';
import { formatNumber, formatRatio, formatTable, median, writeResults } from './lib/report';

const QUICK = process.argv.includes('--quick');
const ROUNDS = QUICK ? 2 : 5;
const ROUND_MS = QUICK ? 3_000 : 10_000;
const CLIENTS = 16;
const VALUE = 'v'.repeat(100);
const MODES = ['always', 'interval', 'off'] as const;

interface Sample {
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

/** CLIENTS connections, each a sequential SET loop (one command in flight per connection). */
async function setLoad(port: number, auth: ServiceKeyAuth, ms: number): Promise<Sample> {
  const clients = Array.from({ length: CLIENTS }, () => new Redis({ host: '127.0.0.1', port, ...auth }));
  await Promise.all(clients.map((c) => c.ping()));
  const latencies: number[] = [];
  const end = Date.now() + ms;
  const started = Date.now();
  await Promise.all(
    clients.map(async (c, i) => {
      for (let n = 0; Date.now() < end; n++) {
        const t = process.hrtime.bigint();
        await c.set(`k:${i}:${n % 1000}`, VALUE);
        latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const elapsed = (Date.now() - started) / 1000;
  for (const c of clients) c.disconnect();
  latencies.sort((a, b) => a - b);
  return { opsPerSec: latencies.length / elapsed, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99) };
}

async function main(): Promise<void> {
  const cluster = await startServiceCluster({ cells: 1 });
  try {
    const ports = new Map<string, { port: number; auth: ServiceKeyAuth }>();
    for (const mode of MODES) {
      const name = `sync-${mode}`;
      const res = await cluster.api('POST', '/v3/service_instances', {
        name,
        engine: 'redis',
        replicas: 0,
        disk_sync: mode,
      });
      if (res.status !== 201) throw new Error(`create ${name}: ${res.status} ${JSON.stringify(res.body)}`);
      const view = await cluster.waitForService(name, 60_000);
      ports.set(mode, { port: view.port, auth: await serviceKey(cluster.api, name) });
    }
    const samples = new Map<string, Sample[]>(MODES.map((m) => [m, []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        const target = ports.get(mode) as { port: number; auth: ServiceKeyAuth };
        samples.get(mode)?.push(await setLoad(target.port, target.auth, ROUND_MS));
      }
    }
    const summary = MODES.map((mode) => {
      const s = samples.get(mode) as Sample[];
      return {
        mode,
        opsPerSec: median(s.map((x) => x.opsPerSec)),
        p50Ms: median(s.map((x) => x.p50Ms)),
        p99Ms: median(s.map((x) => x.p99Ms)),
      };
    });
    const off = summary.find((r) => r.mode === 'off')?.opsPerSec ?? 1;
    const rows = summary.map((r) => ({ ...r, ratioToOff: r.opsPerSec / off }));
    console.log(
      formatTable(
        ['disk sync', 'SET/s', 'ratio to off', 'p50 ms', 'p99 ms'],
        rows.map((r) => [
          r.mode,
          formatNumber(r.opsPerSec),
          formatRatio(r.ratioToOff),
          r.p50Ms.toFixed(2),
          r.p99Ms.toFixed(2),
        ]),
      ),
    );
    const file = writeResults('disk-sync', {
      clients: CLIENTS,
      rounds: ROUNDS,
      roundMs: ROUND_MS,
      valueBytes: VALUE.length,
      rows,
      samples: Object.fromEntries(samples),
    });
    console.log(`results: ${file}`);
  } finally {
    await cluster.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
