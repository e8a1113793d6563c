/**
 * How fast does a volume move, and how long do writes fail while it switches? A Redis primary
 * holding about 200 MB (`--quick`: 50 MB) moves back and forth between two cells while one
 * writer SETs through the router; every part is real (state redis, control, router, cells).
 *
 * - Throughput: bytes the move copied over its whole duration (both phases, the switch
 *   included), against `cp -a` of the same data directory on this machine (and `rsync -a` when
 *   installed), as a ratio.
 * - Write-failure window: per move, the longest gap between two acknowledged writes as the writer
 *   sees it, and the mover's own measure (source stop to target running); p50/p99 over the moves.
 *
 * Writes bench/results/volume-move.json (`--stop-source`: volume-move-stop-source.json). `--mb N`
 * and `--moves N` change the sizes; `--method copy` measures the copy path. Interrupted, it still
 * stops every process it started.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { startServiceCluster } from '../test/helpers/service-cluster';
import { serviceKey } from '../test/helpers/service-key';
import { measureDirBytes } from '../cell/volume-meter';
import type { MoveView } from '../control/services/volume-mover';
import type { ServiceView } from '../control';
import { formatTable, median, writeResults } from './lib/report';

const QUICK = process.argv.includes('--quick');
function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
/** `--mb N` and `--moves N` override the sizes. */
const DATA_MB = flag('--mb', QUICK ? 50 : 200);
const MOVES = flag('--moves', QUICK ? 3 : 10);
/** `--method copy` measures the copy path; the default is the mover's own choice (catch-up for Redis). */
const METHOD = ((): string | undefined => {
  const i = process.argv.indexOf('--method');
  return i > 0 ? process.argv[i + 1] : undefined;
})();
/**
 * `--stop-source`: a switchover stops the old primary cleanly before the promotion instead of
 * pausing its writes (the behaviour of engines that cannot pause), to compare both at one load.
 */
const STOP_SOURCE = process.argv.includes('--stop-source');
const MB = 1024 * 1024;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
}

function run(file: string, args: string[]): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) =>
    execFile(file, args, { timeout: 600_000 }, (err) => (err ? reject(err) : resolve(performance.now() - started))),
  );
}

async function hasRsync(): Promise<boolean> {
  return run('rsync', ['--version']).then(
    () => true,
    () => false,
  );
}

async function uptime(): Promise<string> {
  return new Promise((resolve) => execFile('uptime', (_e, out) => resolve(String(out).trim())));
}

/** Stops what the bench started; set once the platform runs. */
let stopPlatform: (() => Promise<void>) | undefined;

// Interrupted (Ctrl-C, a timeout's SIGTERM): every process the platform started is still ended
// by its pid (service-cluster.ts stop), not left running.
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.once(signal, () => {
    console.error(`${signal}: stopping the platform`);
    void (stopPlatform?.() ?? Promise.resolve()).finally(() => process.exit(130));
  });

async function main(): Promise<void> {
  const loadBefore = await uptime();
  const cluster = await startServiceCluster({
    cells: 2,
    capacityMb: 8192,
    ...(STOP_SOURCE ? { services: { failover: { pauseWritesMs: 0 } } } : {}),
  });
  let stopped: Promise<void> | undefined;
  stopPlatform = () => (stopped ??= cluster.stop());
  try {
    const res = await cluster.api('POST', '/v3/service_instances', {
      name: 'bench-move',
      engine: 'redis',
      replicas: 0,
      volume: { size_mb: DATA_MB * 4 },
    });
    if (res.status !== 201) throw new Error(`create: ${res.status} ${JSON.stringify(res.body)}`);
    let view: ServiceView = await cluster.waitForService('bench-move', 120_000);
    const auth = await serviceKey(cluster.api, 'bench-move');
    const loader = new Redis({ host: '127.0.0.1', port: view.port, ...auth });
    // Incompressible values: Redis compresses repeated bytes in its RDB, which would shrink the volume.
    for (let i = 0; i < DATA_MB; i++) await loader.set(`blob:${i}`, randomBytes(MB));
    loader.disconnect();

    const dataDir = (cell: string): string => path.join(cluster.dataDir, cell, 'instances', 'bench-move-0', 'data');
    const first = view.instances[0].cell;
    const bytesOnDisk = await measureDirBytes(dataDir(first));
    const scratch = await mkdtemp(path.join(tmpdir(), 'sf-bench-move-'));
    const cpMs: number[] = [];
    const rsyncMs: number[] = [];
    const rsync = await hasRsync();
    for (let k = 0; k < 3; k++) {
      await run('sync', []);
      cpMs.push(await run('cp', ['-a', dataDir(first), path.join(scratch, `cp${k}`)]));
      if (rsync) rsyncMs.push(await run('rsync', ['-a', `${dataDir(first)}/`, path.join(scratch, `rsync${k}`)]));
    }
    await rm(scratch, { recursive: true, force: true });

    // The writer: one SET at a time through the router, timing gaps between acknowledgements.
    const writer = new Redis({
      host: '127.0.0.1',
      port: view.port,
      ...auth,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => 20,
    });
    writer.on('error', () => undefined);
    await new Promise<void>((resolve) => writer.once('ready', () => resolve()));
    let lastAck = performance.now();
    let longestGap = 0;
    let writing = true;
    const loop = (async () => {
      for (let n = 0; writing; n++) {
        const ok = await writer.set(`w:${n % 10_000}`, String(n)).then(
          () => true,
          () => false,
        );
        const now = performance.now();
        if (ok) {
          longestGap = Math.max(longestGap, now - lastAck);
          lastAck = now;
        } else await new Promise((r) => setTimeout(r, 5));
      }
    })();

    const moves: Array<{
      method: string;
      bytes: number;
      durationMs: number;
      clientGapMs: number;
      moverWindowMs: number;
    }> = [];
    for (let k = 0; k < MOVES; k++) {
      view = (await cluster.api<ServiceView>('GET', '/v3/service_instances/bench-move')).body;
      const from = view.instances.find((i) => i.role === 'primary')?.cell as string;
      const to = cluster.cells.find((c) => c.name !== from)?.name as string;
      longestGap = 0;
      const started = await cluster.api<MoveView>('POST', '/v3/service_instances/bench-move/actions/move', {
        to,
        ...(METHOD ? { method: METHOD } : {}),
      });
      if (started.status !== 202) throw new Error(`move: ${started.status} ${JSON.stringify(started.body)}`);
      let m: MoveView = started.body;
      while (m.state !== 'done' && m.state !== 'failed') {
        await new Promise((r) => setTimeout(r, 100));
        m = (await cluster.api<MoveView>('GET', `/v3/moves/${m.id}`)).body;
      }
      if (m.state === 'failed') throw new Error(`move ${k} failed: ${m.error}`);
      await cluster.waitForService('bench-move', 120_000);
      // Let the writer see the new primary through the router before the gap is read.
      const ackBefore = lastAck;
      while (lastAck === ackBefore) await new Promise((r) => setTimeout(r, 20));
      moves.push({
        method: m.method,
        bytes: m.bytes,
        durationMs: Date.parse(m.finished_at as string) - Date.parse(m.started_at),
        clientGapMs: longestGap,
        moverWindowMs: m.write_window_ms ?? 0,
      });
      // Where a catch-up move's window went: the switchover's steps, newest operation first.
      const history = (
        await cluster.api<{ resources: Array<{ operation: string; step: string; duration_ms: number | null }> }>(
          'GET',
          '/v3/service_instances/bench-move/fencing',
        )
      ).body.resources;
      const steps =
        m.method === 'catch-up' && history.length > 0
          ? history
              .filter((h) => h.operation === history[0].operation)
              .reverse()
              .map((h) => `${h.step} ${h.duration_ms ?? '?'}`)
              .join(', ')
          : '';
      console.log(
        `move ${k + 1}/${MOVES} (${m.method}): ${from} -> ${to}, ${(m.bytes / MB).toFixed(0)} MB in ${moves[k].durationMs} ms, writes failed for ${longestGap.toFixed(0)} ms${steps ? ` (switchover steps, ms: ${steps})` : ''}`,
      );
    }
    writing = false;
    await loop;
    writer.disconnect();

    const cpMBps = bytesOnDisk / MB / (median(cpMs) / 1000);
    const rsyncMBps = rsync ? bytesOnDisk / MB / (median(rsyncMs) / 1000) : null;
    const moveMBps = median(moves.map((m) => m.bytes / MB / (m.durationMs / 1000)));
    const gaps = moves.map((m) => m.clientGapMs).sort((a, b) => a - b);
    const windows = moves.map((m) => m.moverWindowMs).sort((a, b) => a - b);
    const loadAfter = await uptime();
    console.log(
      formatTable(
        ['measure', 'value'],
        [
          ['data directory', `${(bytesOnDisk / MB).toFixed(0)} MB`],
          ['cp -a', `${cpMBps.toFixed(0)} MB/s`],
          ['rsync -a', rsyncMBps === null ? 'not installed' : `${rsyncMBps.toFixed(0)} MB/s`],
          ['move (whole, median)', `${moveMBps.toFixed(0)} MB/s`],
          ['move / cp -a', `${(moveMBps / cpMBps).toFixed(2)}x`],
          [
            'writes failing, client p50 / p99',
            `${percentile(gaps, 50).toFixed(0)} / ${percentile(gaps, 99).toFixed(0)} ms`,
          ],
          [
            'mover window p50 / p99 (copy: source stop to target running; catch-up: route fence to new route)',
            `${percentile(windows, 50)} / ${percentile(windows, 99)} ms`,
          ],
          ['load before / after', `${loadBefore} / ${loadAfter}`],
        ],
      ),
    );
    const file = writeResults(STOP_SOURCE ? 'volume-move-stop-source' : 'volume-move', {
      oldPrimary: STOP_SOURCE ? 'stopped before the promotion' : 'writes paused, stopped after the new route',
      dataMb: DATA_MB,
      bytesOnDisk,
      cpMs,
      rsyncMs,
      cpMBps,
      rsyncMBps,
      moveMBps,
      ratioToCp: moveMBps / cpMBps,
      moves,
      clientGapP50Ms: percentile(gaps, 50),
      clientGapP99Ms: percentile(gaps, 99),
      moverWindowP50Ms: percentile(windows, 50),
      moverWindowP99Ms: percentile(windows, 99),
      loadBefore,
      loadAfter,
    });
    console.log(`results: ${file}`);
  } finally {
    await stopPlatform();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
