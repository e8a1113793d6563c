/**
 * PostgreSQL's `postmaster.pid` after its postmaster was SIGKILLed. PostgreSQL itself treats the
 * file as stale when the pid in it is gone, but not when that pid still answers a signal: a zombie
 * nobody has reaped yet (an adopted engine's parent is init, after a cell restart) or a pid
 * reused by an unrelated process (many hosts have pid_max 32768). It then refuses to start
 * ("lock file postmaster.pid already exists"), and so does the crash recovery pg_rewind runs
 * for a deposed primary, which leaves the service without a standby.
 *
 * The file is stale when no live process works in the data directory: the postmaster changes
 * into it at start and every process it forks inherits that, so a backend that outlived its
 * postmaster keeps the file, and PostgreSQL's own guard against such backends, in place.
 */
import { readdir, readlink, realpath, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';

/** Live processes whose working directory is `dir` (zombies have none). */
export async function processesWorkingIn(dir: string): Promise<number[]> {
  // The kernel reports working directories with symbolic links resolved.
  const want = await realpath(dir).catch(() => path.resolve(dir));
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => null);
    if (cwd === want) found.push(pid);
  }
  return found;
}

/** Removes `dataDir/postmaster.pid` when no process works in `dataDir`; true when it did. */
export async function removeStaleLockFile(dataDir: string): Promise<boolean> {
  const lockFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(lockFile)) return false;
  if ((await processesWorkingIn(dataDir)).length > 0) return false;
  await rm(lockFile, { force: true });
  return true;
}
