/**
 * One load benchmark at a time per machine. Two overlapping runs would each measure the other's
 * load (and overwrite each other's results), so a second run waits for the first to finish.
 * The lock is a file holding the owner's pid; a lock whose pid is gone is taken over.
 */
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './processes';

const LOCK_PATH = join(tmpdir(), 'sf-bench-load.lock');

function ownerAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function tryTake(label: string): number | undefined {
  try {
    writeFileSync(LOCK_PATH, `${process.pid} ${label}\n`, { flag: 'wx' });
    return undefined;
  } catch {
    const owner = Number(readFileSync(LOCK_PATH, 'utf8').split(' ')[0]);
    if (Number.isInteger(owner) && owner > 0 && ownerAlive(owner)) return owner;
    // A stale lock from a run that was killed without cleanup.
    unlinkSync(LOCK_PATH);
    return tryTake(label);
  }
}

/** Waits until this process holds the machine-wide load benchmark lock; released on exit. */
export async function acquireRunLock(label: string): Promise<void> {
  let announced = false;
  for (;;) {
    const owner = tryTake(label);
    if (owner === undefined) break;
    if (!announced) {
      process.stderr.write(`waiting for the load benchmark run of pid ${owner} to finish (${LOCK_PATH})\n`);
      announced = true;
    }
    await sleep(2000);
  }
  process.on('exit', () => {
    try {
      if (Number(readFileSync(LOCK_PATH, 'utf8').split(' ')[0]) === process.pid) unlinkSync(LOCK_PATH);
    } catch {
      // Already gone.
    }
  });
}
