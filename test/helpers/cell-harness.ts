/**
 * Shared pieces of the cell tests: a throwaway cell data directory, instance specs with defaults,
 * and waiting for a condition.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { descriptorTableSize } from '../../router/descriptor-table';
import { instanceSpecSchema, type InstanceSpec, type InstanceSpecInput } from '../../protocol/cell-protocol';

export async function tempCellDir(prefix = 'sf-cell-'): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  // Engines run as their own users when the tests run as root (redis, postgres, sf-instance):
  // they must be able to walk down to their volumes.
  await chmod(dir, 0o711);
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export function spec(
  input: Partial<InstanceSpecInput> & Pick<InstanceSpecInput, 'instanceId' | 'engine'>,
): InstanceSpec {
  return instanceSpecSchema.parse({ service: 'svc', role: 'primary', epoch: 1, volume: { sizeMb: 64 }, ...input });
}

export async function eventually<T>(
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline)
      throw new Error(`${what} not reached in ${timeoutMs} ms${lastError ? `: ${String(lastError)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Checks that process `pid` runs `name` with a descriptor table of at least `slots` slots (or all
 * its hard RLIMIT_NOFILE allows), and holds no descriptor numbered 256 or above: what an engine
 * started through the table-growing wrapper (cell/engine-fd-table.ts) looks like.
 */
export function expectDescriptorTable(pid: number, name: string, slots: number): void {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  expect(status).to.match(new RegExp(`^Name:\\s+${name}$`, 'm'));
  const hard = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))?.[1];
  const reachable = hard === undefined || hard === 'unlimited' ? slots : Math.min(slots, Number(hard) - 1);
  expect(descriptorTableSize(`/proc/${pid}/status`)).to.be.at.least(reachable);
  expect(Math.max(...readdirSync(`/proc/${pid}/fd`).map(Number))).to.be.below(256);
}
