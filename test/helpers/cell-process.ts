/**
 * Drives `sf cell` processes from tests through the Redis protocol only, the way control does:
 * write desired specs, push orders, read actual state and order results.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { putDesired, readActual, removeDesired, sendOrder, type OrderRequest } from '../../control/state/cell-client';
import type { ActualInstance, InstanceSpecInput, OrderResult } from '../../protocol/cell-protocol';
import { eventually } from './cell-harness';
import { keyLayout } from '../../protocol/keys';

const KEYS = keyLayout();

const SF = path.resolve(__dirname, '../../cli/sf.js');

export interface CellProcessOptions {
  name: string;
  redisUrl: string;
  dataDir: string;
  portRange: string;
  zone?: string;
  extraArgs?: string[];
}

export function spawnCell(options: CellProcessOptions): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      SF,
      'cell',
      '--name',
      options.name,
      '--zone',
      options.zone ?? 'z1',
      '--capacity-mb',
      '4096',
      '--redis',
      options.redisUrl,
      '--data-dir',
      options.dataDir,
      '--port-range',
      options.portRange,
      '--heartbeat-ms',
      '200',
      '--heartbeat-ttl-ms',
      '1000',
      ...(options.extraArgs ?? []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  child.stderr?.on('data', (d: Buffer) => {
    if (process.env.SF_TEST_VERBOSE) process.stderr.write(d);
  });
  return child;
}

export async function killProcess(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

/** A control stand-in over one Redis connection; remembers instance pids for cleanup. */
export class CellDriver {
  readonly pids = new Set<number>();

  constructor(private readonly redis: Redis) {}

  async desire(cell: string, input: Partial<InstanceSpecInput> & { instanceId: string }): Promise<void> {
    await putDesired(this.redis, KEYS, cell, {
      service: 'svc',
      engine: 'redis',
      role: 'primary',
      epoch: 1,
      volume: { sizeMb: 64 },
      ...input,
    });
  }

  undesire(cell: string, instanceId: string): Promise<void> {
    return removeDesired(this.redis, KEYS, cell, instanceId);
  }

  async actual(cell: string, id: string): Promise<ActualInstance | undefined> {
    const value = await readActual(this.redis, KEYS, cell, id);
    if (value?.pid) this.pids.add(value.pid);
    return value;
  }

  async waitState(
    cell: string,
    id: string,
    state: ActualInstance['state'],
    timeoutMs = 30_000,
  ): Promise<ActualInstance> {
    return eventually(
      async () => {
        const a = await this.actual(cell, id);
        return a?.state === state ? a : undefined;
      },
      timeoutMs,
      `${cell}/${id} ${state}`,
    );
  }

  /** Loosely typed on purpose: tests also send invalid orders. */
  order(cell: string, body: Record<string, unknown>, timeoutMs = 30_000): Promise<OrderResult> {
    return sendOrder(this.redis, KEYS, cell, body as OrderRequest, { timeoutMs });
  }

  /** Instances outlive their cell agent by design: tests kill them by process group. */
  killInstances(): void {
    for (const pid of this.pids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    this.pids.clear();
  }
}
