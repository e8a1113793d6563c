/**
 * New connections per second: many parallel loops that each connect, send one Redis PING, wait
 * for the reply, close, and wait for the close to finish before starting over, for a fixed time.
 * A whole cycle is counted, so a proxy that accepts fast but tears down slowly is not flattered.
 *
 * `closedBy: 'client'` (the default) half-closes after the reply, as most drivers do;
 * `closedBy: 'server'` sends PING and QUIT together and lets the server close, which keeps
 * TIME_WAIT off the client's and the proxy's ports (bench/native/conn-cycle-client.c says why
 * that limits every target to the same rate otherwise).
 *
 * The generator is bench/native/conn-cycle-client.c when `nativeClient` names its build, else
 * this file run as its own process (`node conn-rate.js --port P ...`, JSON on stdout), so it
 * never shares an event loop with the harness or a proxy under test.
 */
import { connect } from 'node:net';
import { runToCompletion } from './processes';

export interface ConnRateOptions {
  host: string;
  port: number;
  seconds: number;
  /** Connection loops running at once. */
  concurrency: number;
  /** Who ends each connection (default `client`). */
  closedBy?: ConnCloser;
  /** Path of the built bench/native/conn-cycle-client; the Node generator without. */
  nativeClient?: string;
}

export type ConnCloser = 'client' | 'server';

export interface ConnRateResult {
  connectionsPerSecond: number;
  completed: number;
  errors: number;
  /** Latency of one whole cycle (connect, PING, +PONG, close), in milliseconds. */
  p50Ms: number;
  p99Ms: number;
  /** The slowest cycle: in a storm (a run shorter than a cycle), when the last client was served. */
  maxMs: number;
  /** The generator's own CPU per cycle, in microseconds (the native client reports it). */
  clientCpuUsPerCycle?: number;
}

const PING = Buffer.from('PING\r\n');
const PING_QUIT = Buffer.from('PING\r\nQUIT\r\n');

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** The generator itself; runs in the calling process. */
export function generateConnections(options: ConnRateOptions): Promise<ConnRateResult> {
  const serverCloses = options.closedBy === 'server';
  const request = serverCloses ? PING_QUIT : PING;
  const replyBytes = serverCloses ? '+PONG\r\n+OK\r\n'.length : '+PONG\r\n'.length;
  return new Promise((resolve) => {
    const latencies: number[] = [];
    let completed = 0;
    let errors = 0;
    let active = 0;
    const started = process.hrtime.bigint();
    const deadline = started + BigInt(Math.round(options.seconds * 1e9));
    let finished = false;

    const finish = (): void => {
      if (finished || active > 0) return;
      finished = true;
      const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
      const sorted = Float64Array.from(latencies).sort();
      resolve({
        connectionsPerSecond: completed / elapsed,
        completed,
        errors,
        p50Ms: percentile(sorted, 50),
        p99Ms: percentile(sorted, 99),
        maxMs: percentile(sorted, 100),
      });
    };

    // Every client's first cycle runs whatever the time: a run shorter than a cycle is a storm.
    let begun = 0;
    const loop = (): void => {
      if (begun >= options.concurrency && process.hrtime.bigint() >= deadline) {
        active--;
        finish();
        return;
      }
      begun++;
      const t0 = process.hrtime.bigint();
      let received = 0;
      let failed = false;
      const socket = connect({ host: options.host, port: options.port });
      socket.setNoDelay(true);
      socket.once('connect', () => socket.write(request));
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received >= replyBytes && !serverCloses) socket.end();
      });
      socket.once('error', () => {
        failed = true;
      });
      socket.once('close', () => {
        if (failed || received < replyBytes) {
          errors++;
        } else {
          completed++;
          latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
        setImmediate(loop);
      });
    };

    active = options.concurrency;
    for (let i = 0; i < options.concurrency; i++) loop();
  });
}

/** Runs the generator in a child process and returns its result. */
export async function runConnRate(options: ConnRateOptions): Promise<ConnRateResult> {
  const closedBy = options.closedBy ?? 'client';
  if (options.nativeClient !== undefined) {
    const r = await runToCompletion(
      'conn-cycle-client',
      options.nativeClient,
      [options.host, String(options.port), String(options.concurrency), String(options.seconds), closedBy],
      { timeoutMs: (options.seconds + 60) * 1000 },
    );
    if (r.code !== 0) throw new Error(`conn-cycle-client exited ${r.code}: ${r.stderr.slice(0, 2000)}`);
    return JSON.parse(r.stdout) as ConnRateResult;
  }
  const args = [
    __filename,
    '--host',
    options.host,
    '--port',
    String(options.port),
    '--seconds',
    String(options.seconds),
    '--concurrency',
    String(options.concurrency),
    '--closed-by',
    closedBy,
  ];
  const result = await runToCompletion('conn-rate', process.execPath, args, {
    timeoutMs: (options.seconds + 60) * 1000,
  });
  if (result.code !== 0) throw new Error(`conn-rate exited ${result.code}: ${result.stderr.slice(0, 2000)}`);
  return JSON.parse(result.stdout) as ConnRateResult;
}

function argValue(argv: string[], name: string, fallback: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
}

if (require.main === module) {
  const argv = process.argv.slice(2);
  void generateConnections({
    host: argValue(argv, '--host', '127.0.0.1'),
    port: Number(argValue(argv, '--port', '6379')),
    seconds: Number(argValue(argv, '--seconds', '3')),
    concurrency: Number(argValue(argv, '--concurrency', '32')),
    closedBy: argValue(argv, '--closed-by', 'client') === 'server' ? 'server' : 'client',
  }).then((result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`);
  });
}
