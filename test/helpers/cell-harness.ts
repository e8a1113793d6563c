/**
 * Shared pieces of the cell tests: a throwaway cell data directory, instance specs with defaults,
 * and waiting for a condition.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
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
