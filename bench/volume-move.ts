/**
 * How fast does a volume move, and how long do writes fail while it switches? A Redis (or, with
 * `--engine postgres`, a PostgreSQL) primary holding about 200 MB (`--quick`: 50 MB) moves back
 * and forth between two cells while one writer writes through the router (Redis SET, PostgreSQL
 * one INSERT per transaction); every part is real (state redis, control, router, cells).
 *
 * - Throughput: bytes the move copied over its whole duration (both phases, the switch
 *   included), against `cp -a` of the same data directory on this machine (also followed by a
 *   `sync`, since a move's copy is on disk when it ends, and `rsync -a` when installed), as a ratio.
 * - Write-failure window: per move, the longest gap between two acknowledged writes as the writer
 *   sees it, and the mover's own measure (catch-up: route fence to new route; copy: source stop to
 *   target running); p50/p99 over the moves.
 *
 * Writes bench/results/volume-move[-postgres][-stop-source].json. `--mb N` and `--moves N` change
 * the sizes; `--method copy` measures the copy path. Interrupted, it still stops every process
 * it started.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { Client } from 'pg';
import { startServiceCluster, type ServiceCluster } from '../test/helpers/service-cluster';
import { keyOf } from '../test/helpers/volume-support';
import type { ServiceKeyAuth } from '../test/helpers/service-key';
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
 * `--stop-source`: the switchover runs with `pauseWritesMs: 0`: it reads the old primary's
 * position, waits for the target to reach it and only then stops the old primary cleanly, instead
 * of pausing its writes (Redis) or stopping it right after the routers acknowledged and taking
 * the stop's position as the goal (PostgreSQL); to compare both orders at one load.
 */
const STOP_SOURCE = process.argv.includes('--stop-source');
/** `--engine postgres` moves a PostgreSQL primary; the default is Redis. */
const ENGINE = ((): 'redis' | 'postgres' => {
  const i = process.argv.indexOf('--engine');
  const asked = i > 0 ? process.argv[i + 1] : 'redis';
  if (asked !== 'redis' && asked !== 'postgres') {
    process.stderr.write(`volume-move: --engine must be redis or postgres, not '${asked}'\n`);
    process.exit(2);
  }
  return asked;
})();
const MB = 1024 * 1024;
/** PostgreSQL rows of ~1 KB (under the TOAST threshold, so stored as written, not compressed). */
const PG_ROWS_PER_MB = 1000;

/** One write through the router; false when it failed. */
interface Writer {
  write(n: number): Promise<boolean>;
  close(): void;
}

async function redisWriter(port: number, auth: ServiceKeyAuth): Promise<Writer> {
  const client = new Redis({
    host: '127.0.0.1',
    port,
    ...auth,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => 20,
  });
  client.on('error', () => undefined);
  await new Promise<void>((resolve) => client.once('ready', () => resolve()));
  return {
    write: (n) =>
      client.set(`w:${n % 10_000}`, String(n)).then(
        () => true,
        () => false,
      ),
    close: () => client.disconnect(),
  };
}

/** One INSERT per transaction; a failed connection is replaced by a new one at the next write. */
function pgWriter(port: number, auth: ServiceKeyAuth): Writer {
  let client: Client | null = null;
  const connect = async (): Promise<Client> => {
    const c = new Client({
      host: '127.0.0.1',
      port,
      user: auth.username,
      password: auth.password,
      database: 'postgres',
      connectionTimeoutMillis: 2_000,
    });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  };
  return {
    write: async (n) => {
      try {
        client ??= await connect();
        await client.query('insert into w (n) values ($1)', [n]);
        return true;
      } catch {
        const dead = client;
        client = null;
        void dead?.end().catch(() => undefined);
        return false;
      }
    },
    close: () => void client?.end().catch(() => undefined),
  };
}

/** Fills the service with about `mb` MB of data that the engine does not compress. */
async function load(view: ServiceView, auth: ServiceKeyAuth, mb: number): Promise<void> {
  if (ENGINE === 'redis') {
    const loader = new Redis({ host: '127.0.0.1', port: view.port, ...auth });
    // Incompressible values: Redis compresses repeated bytes in its RDB, which would shrink the volume.
    for (let i = 0; i < mb; i++) await loader.set(`blob:${i}`, randomBytes(MB));
    loader.disconnect();
    return;
  }
  const c = new Client({
    host: '127.0.0.1',
    port: view.port,
    user: auth.username,
    password: auth.password,
    database: 'postgres',
  });
  await c.connect();
  try {
    await c.query('create table blob (id int primary key, pad text); create table w (n bigint primary key)');
    const rows = mb * PG_ROWS_PER_MB;
    for (let from = 1; from <= rows; from += 10_000)
      await c.query(
        'insert into blob select g, repeat(md5(g::text || random()::text), 30) from generate_series($1::int, $2::int) g',
        [from, Math.min(rows, from + 9_999)],
      );
    await c.query('checkpoint').catch(() => undefined);
  } finally {
    await c.end();
  }
}

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
  const cluster: ServiceCluster = await startServiceCluster({
    cells: 2,
    capacityMb: 8192,
    ...(STOP_SOURCE ? { services: { failover: { pauseWritesMs: 0 } } } : {}),
  });
  let stopped: Promise<void> | undefined;
  stopPlatform = () => (stopped ??= cluster.stop());
  try {
    const res = await cluster.api('POST', '/v3/service_instances', {
      name: 'bench-move',
      engine: ENGINE,
      replicas: 0,
      volume: { size_mb: DATA_MB * 4 },
    });
    if (res.status !== 201) throw new Error(`create: ${res.status} ${JSON.stringify(res.body)}`);
    let view: ServiceView = await cluster.waitForService('bench-move', 120_000);
    const auth = await keyOf(cluster, 'bench-move');
    await load(view, auth, DATA_MB);

    const dataDir = (cell: string): string => path.join(cluster.dataDir, cell, 'instances', 'bench-move-0', 'data');
    const first = view.instances[0].cell;
    const bytesOnDisk = await measureDirBytes(dataDir(first));
    const scratch = await mkdtemp(path.join(tmpdir(), 'sf-bench-move-'));
    const cpMs: number[] = [];
    const cpSyncMs: number[] = [];
    const rsyncMs: number[] = [];
    const rsync = await hasRsync();
    for (let k = 0; k < 3; k++) {
      await run('sync', []);
      cpMs.push(await run('cp', ['-a', dataDir(first), path.join(scratch, `cp${k}`)]));
      // The copy on disk, as a move's is when it ends (the receiver syncs before the hand-off).
      cpSyncMs.push(cpMs[k] + (await run('sync', ['-f', scratch])));
      if (rsync) rsyncMs.push(await run('rsync', ['-a', `${dataDir(first)}/`, path.join(scratch, `rsync${k}`)]));
    }
    await rm(scratch, { recursive: true, force: true });

    // The writer: one write at a time through the router, timing gaps between acknowledgements.
    const writer = ENGINE === 'redis' ? await redisWriter(view.port, auth) : pgWriter(view.port, auth);
    let lastAck = performance.now();
    let longestGap = 0;
    let writing = true;
    const loop = (async () => {
      for (let n = 0; writing; n++) {
        const ok = await writer.write(n);
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
      // A second blip right after the switch (the source's removal, a route change) counts too.
      await new Promise((r) => setTimeout(r, 1_000));
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
        `move ${k + 1}/${MOVES} (${m.method}): ${from} -> ${to}, ${(m.bytes / MB).toFixed(0)} MB in ${moves[k].durationMs} ms, writes failed for ${moves[k].clientGapMs.toFixed(0)} ms${steps ? ` (switchover steps, ms: ${steps})` : ''}`,
      );
    }
    writing = false;
    await loop;
    writer.close();

    const cpMBps = bytesOnDisk / MB / (median(cpMs) / 1000);
    const cpSyncMBps = bytesOnDisk / MB / (median(cpSyncMs) / 1000);
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
          ['engine', ENGINE],
          ['cp -a', `${cpMBps.toFixed(0)} MB/s`],
          ['cp -a + sync', `${cpSyncMBps.toFixed(0)} MB/s`],
          ['rsync -a', rsyncMBps === null ? 'not installed' : `${rsyncMBps.toFixed(0)} MB/s`],
          ['move (whole, median)', `${moveMBps.toFixed(1)} MB/s`],
          ['move / cp -a', `${(moveMBps / cpMBps).toFixed(3)}x`],
          ['move / cp -a + sync', `${(moveMBps / cpSyncMBps).toFixed(3)}x`],
          ['move / rsync -a', rsyncMBps === null ? '-' : `${(moveMBps / rsyncMBps).toFixed(3)}x`],
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
    const file = writeResults(
      `volume-move${ENGINE === 'redis' ? '' : `-${ENGINE}`}${STOP_SOURCE ? '-stop-source' : ''}`,
      {
        engine: ENGINE,
        oldPrimary:
          STOP_SOURCE || ENGINE === 'postgres'
            ? 'stopped before the promotion'
            : 'writes paused, stopped after the new route',
        dataMb: DATA_MB,
        bytesOnDisk,
        cpMs,
        cpSyncMs,
        rsyncMs,
        cpMBps,
        cpSyncMBps,
        rsyncMBps,
        moveMBps,
        ratioToCp: moveMBps / cpMBps,
        ratioToCpSync: moveMBps / cpSyncMBps,
        ratioToRsync: rsyncMBps === null ? null : moveMBps / rsyncMBps,
        moves,
        clientGapP50Ms: percentile(gaps, 50),
        clientGapP99Ms: percentile(gaps, 99),
        moverWindowP50Ms: percentile(windows, 50),
        moverWindowP99Ms: percentile(windows, 99),
        loadBefore,
        loadAfter,
      },
    );
    console.log(`results: ${file}`);
  } finally {
    await stopPlatform();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
