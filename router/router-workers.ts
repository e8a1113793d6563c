/**
 * `sf router --workers N`: N router processes, one per core, sharing every route port through
 * SO_REUSEPORT (router/reuseport.ts), so that the kernel spreads new connections over them.
 * The first process only supervises: it starts the workers with the same command line, forwards
 * SIGHUP (reload) and SIGTERM/SIGINT (stop), and restarts a worker that dies on its own.
 * Each worker is independent: its own route source, relay and admin endpoint.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { type Logger, ErrorCode, SfError } from '../common';
import { reusePortAvailable } from './reuseport';

/** Set in a worker's environment to its index, 0..N-1. */
export const ROUTER_WORKER_ENV = 'SF_ROUTER_WORKER';

/** A crashing worker is restarted after this delay, so a broken config cannot spin the CPU. */
const RESTART_DELAY_MS = 1000;

/** This process's worker index, or undefined in a process that is not a worker. */
export function routerWorkerIndex(): number | undefined {
  const raw = process.env[ROUTER_WORKER_ENV];
  if (raw === undefined) return undefined;
  const index = Number(raw);
  return Number.isInteger(index) && index >= 0 ? index : undefined;
}

/**
 * The admin port of worker `index`: workers cannot share one admin endpoint (each has its own
 * counters), so worker k listens on the given port + k; port 0 stays 0 (the kernel chooses).
 */
export function workerAdminPort(port: number, index: number | undefined): number {
  return port === 0 || index === undefined ? port : port + index;
}

/**
 * Runs `count` workers with this process's own command line and resolves when all have stopped
 * after a signal. Throws when SO_REUSEPORT is not available (the addon is not built).
 */
export function superviseRouterWorkers(count: number, logger: Logger): Promise<void> {
  if (!reusePortAvailable()) {
    throw new SfError(
      ErrorCode.InvalidOption,
      '--workers needs the native addon for SO_REUSEPORT (run npm run setup)',
      'workers',
    );
  }
  const children = new Map<number, ChildProcess>();
  let stopping = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));

  const startWorker = (index: number): void => {
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      env: { ...process.env, [ROUTER_WORKER_ENV]: String(index) },
      stdio: 'inherit',
    });
    children.set(index, child);
    child.once('exit', (code, signal) => {
      children.delete(index);
      if (stopping) {
        if (children.size === 0) resolveDone();
        return;
      }
      logger.error({ worker: index, code, signal }, 'router worker exited; restarting it');
      setTimeout(() => {
        if (!stopping) startWorker(index);
      }, RESTART_DELAY_MS).unref();
    });
  };

  const forward = (signal: NodeJS.Signals): void => {
    if (signal !== 'SIGHUP') stopping = true;
    for (const child of children.values()) child.kill(signal);
    if (stopping && children.size === 0) resolveDone();
  };
  for (const signal of ['SIGHUP', 'SIGTERM', 'SIGINT'] as const) process.on(signal, () => forward(signal));

  for (let i = 0; i < count; i++) startWorker(i);
  logger.info({ workers: count, pids: [...children.values()].map((c) => c.pid) }, 'router workers started');
  return done;
}
