/**
 * Runs many simulated cells (bench/lib/cell-simulator.ts) against a state Redis, so control can be
 * driven at 1,000 cells and 10,000 services on one machine. A benchmark tool: instances exist
 * only as reported state.
 *
 *   node dist/bench/cell-simulator.js --redis redis://127.0.0.1:6379 --cells 1000 [--prefix sf:]
 *     [--heartbeat-ms 1500 (half the TTL)] [--heartbeat-ttl-ms 3000] [--desired-poll-ms 30000]
 *     [--full-report-ms 10000]
 *
 * When started with an IPC channel (child_process.fork), it tells its parent `{type: 'ready'}`,
 * `{type: 'scheduled', instanceId, service, at}`, `{type: 'running', ...}` and
 * `{type: 'order', order, instanceId, ok, at}`, answers
 * `{type: 'stats'}` and obeys `{type: 'fail', instanceId}` (the engine dies) and `{type: 'stop'}`.
 */
import { CellSimulator, DEFAULT_CELL_SIMULATOR_OPTIONS } from './lib/cell-simulator';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function numberFlag(name: string, fallback: number): number {
  const text = flag(name);
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    process.stderr.write(`cell-simulator: --${name} must be a positive integer\n`);
    process.exit(2);
  }
  return n;
}

type ParentMessage = { type: 'fail'; instanceId: string } | { type: 'stats' } | { type: 'stop' };

async function main(): Promise<void> {
  const d = DEFAULT_CELL_SIMULATOR_OPTIONS;
  const send = (msg: Record<string, unknown>): void => {
    if (process.send) process.send(msg);
  };
  const sim = new CellSimulator({
    redisUrl: flag('redis') ?? process.env.SF_REDIS_URL ?? 'redis://127.0.0.1:6379',
    keyPrefix: flag('prefix') ?? process.env.SF_KEY_PREFIX ?? d.keyPrefix,
    cells: numberFlag('cells', d.cells),
    heartbeatMs: flag('heartbeat-ms') === undefined ? undefined : numberFlag('heartbeat-ms', 1),
    heartbeatTtlMs: numberFlag('heartbeat-ttl-ms', d.heartbeatTtlMs),
    desiredPollMs: numberFlag('desired-poll-ms', d.desiredPollMs),
    fullReportMs: numberFlag('full-report-ms', d.fullReportMs),
    onScheduled: (instanceId, service, at) => send({ type: 'scheduled', instanceId, service, at }),
    onRunning: (instanceId, service, at) => send({ type: 'running', instanceId, service, at }),
    onOrder: (order, result) =>
      send({
        type: 'order',
        order: order.type,
        instanceId: 'instanceId' in order ? order.instanceId : null,
        ok: result.ok,
        at: result.finishedAt,
      }),
  });
  await sim.start();
  const stop = async (): Promise<void> => {
    await sim.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
  process.on('message', (msg: ParentMessage) => {
    if (msg.type === 'fail') send({ type: 'failed', instanceId: msg.instanceId, ok: sim.failInstance(msg.instanceId) });
    else if (msg.type === 'stats') send({ type: 'stats', stats: sim.snapshotStats() });
    else if (msg.type === 'stop') void stop();
  });
  process.on('disconnect', () => void stop());
  send({ type: 'ready', cells: sim.cellNames().length });
  if (!process.send) process.stderr.write(`cell-simulator: ${sim.cellNames().length} cells registered\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`cell-simulator: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
