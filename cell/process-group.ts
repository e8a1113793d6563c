/**
 * What the process executor and its sidecars share about the processes they run: each is spawned
 * detached, in its own process group (a cell restart must not take it down, and a signal to the
 * group reaches its children), as the given user with a clean environment and its output in a
 * log file of the volume; it is then watched and signalled by pid, also after a cell restart,
 * when it is no longer the cell's child.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { cleanEnv } from './instance-env';
import type { RunAs } from './run-command';

export interface DetachedSpawn {
  file: string;
  args: string[];
  /** Appended to (mode 0600): stdout and stderr both. */
  logFile: string;
  /** The whole environment besides PATH/HOME/USER: built from the spec, never the cell's own. */
  env: Record<string, string>;
  user: RunAs | undefined;
  /** HOME of the process. @default cleanEnv's */
  home?: string;
}

/** Spawns a detached process group leader; the log's descriptor is closed here once handed over. */
export async function spawnDetached(s: DetachedSpawn): Promise<ChildProcess> {
  const log = await open(s.logFile, 'a', 0o600);
  try {
    return spawn(s.file, s.args, {
      detached: true,
      cwd: '/',
      stdio: ['ignore', log.fd, log.fd],
      // The cell's environment holds the platform's secrets.
      env: cleanEnv(s.env, s.user, s.home),
      // libuv also drops the cell's supplementary groups when it switches the user.
      ...(s.user ? { uid: s.user.uid, gid: s.user.gid } : {}),
    });
  } finally {
    await log.close();
  }
}

/** Whether `pid` runs: a zombie counts as dead, a process of another user (EPERM) as alive. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // An adopted process is not our child: once dead it may linger as a zombie until its new
  // parent reaps it (some container inits never do), and signal 0 still succeeds on a zombie.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Signals the process group led by `pid`, or the process alone when it leads none. */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone.
    }
  }
}
