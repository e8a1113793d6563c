/**
 * Drives `sf cell` processes from tests through the Redis protocol only, the way control does:
 * write desired specs, push orders, read actual state and order results.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { cellKeys, NOTIFY_DESIRED, type ActualInstance, type InstanceSpecInput, type OrderResult } from '../../control/cell/cell-protocol';
import { eventually } from './cell-harness';

const SF = path.resolve(__dirname, '../../control/cli/sf.js');

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
    [SF, 'cell', '--name', options.name, '--zone', options.zone ?? 'z1', '--capacity-mb', '4096', '--redis', options.redisUrl, '--data-dir', options.dataDir, '--port-range', options.portRange, '--heartbeat-ms', '200', '--heartbeat-ttl-ms', '1000', ...(options.extraArgs ?? [])],
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
    const full = { service: 'svc', engine: 'redis', role: 'primary', epoch: 1, volume: { sizeMb: 64 }, ...input };
    await this.redis.hset(cellKeys.desired(cell), input.instanceId, JSON.stringify(full));
    await this.redis.publish(cellKeys.notify(cell), NOTIFY_DESIRED);
  }

  async undesire(cell: string, instanceId: string): Promise<void> {
    await this.redis.hdel(cellKeys.desired(cell), instanceId);
    await this.redis.publish(cellKeys.notify(cell), NOTIFY_DESIRED);
  }

  async actual(cell: string, id: string): Promise<ActualInstance | undefined> {
    const json = await this.redis.hget(cellKeys.actual(cell), id);
    const value = json ? (JSON.parse(json) as ActualInstance) : undefined;
    if (value?.pid) this.pids.add(value.pid);
    return value;
  }

  async waitState(cell: string, id: string, state: ActualInstance['state'], timeoutMs = 30_000): Promise<ActualInstance> {
    return eventually(async () => {
      const a = await this.actual(cell, id);
      return a?.state === state ? a : undefined;
    }, timeoutMs, `${cell}/${id} ${state}`);
  }

  async order(cell: string, body: Record<string, unknown>, timeoutMs = 30_000): Promise<OrderResult> {
    const orderId = `o-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    await this.redis.lpush(cellKeys.orders(cell), JSON.stringify({ ...body, orderId }));
    return eventually(async () => {
      const json = await this.redis.get(cellKeys.orderResult(orderId));
      return json ? (JSON.parse(json) as OrderResult) : undefined;
    }, timeoutMs, `result of order ${orderId}`);
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
