/**
 * The last step of stopping `sf up`: engines and sidecars a cell could not stop itself. A cell that
 * hangs, or is still starting an instance when it is told to stop, is SIGKILLed by the supervisor
 * after the stop timeout, and what it had spawned lives on in its own process group (by design:
 * engines outlive a crashed cell). Ctrl-C promises that everything stops, so every process still
 * tied to the cells' directories is stopped here, the way its cell would have.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';
import { sep } from 'node:path';
import { alive, signalGroup } from '../cell/process-group';

export interface LeftoverProcess {
  pid: number;
  /** The executable's name, as the kernel reports it (`/proc/PID/comm`). */
  comm: string;
  /** The command line, for the operator's log. */
  args: string[];
  /** Its process group: PostgreSQL's workers share their postmaster's and inherit its log. */
  pgid: number;
}

/**
 * Processes (other than this one) whose command line names a path under `dir`, or whose standard
 * output is a file under it: every engine names its data directory, and every engine and sidecar
 * logs into its volume.
 */
export async function findProcessesUnder(dir: string): Promise<LeftoverProcess[]> {
  const prefix = dir.endsWith(sep) ? dir : dir + sep;
  const under = (p: string): boolean => p === dir || p.startsWith(prefix);
  const found: LeftoverProcess[] = [];
  for (const entry of await readdir('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const args = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter((a) => a !== '');
      const stdout = await readlink(`/proc/${pid}/fd/1`).catch(() => '');
      if (!args.some(under) && !under(stdout)) continue;
      const comm = (await readFile(`/proc/${pid}/comm`, 'utf8')).trim();
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      // After the parenthesised name: state, ppid, pgrp.
      const pgid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
      found.push({ pid, comm, args, pgid });
    } catch {
      // Gone meanwhile, or a kernel thread.
    }
  }
  return found;
}

/** PostgreSQL's fast shutdown is SIGINT (SIGTERM waits for every client); the rest stop on SIGTERM. */
function stopSignalOf(p: LeftoverProcess): NodeJS.Signals {
  return p.comm === 'postgres' ? 'SIGINT' : 'SIGTERM';
}

/**
 * Stops every process under `dir`: its stop signal to its process group, SIGKILL to those still
 * running after `killAfterMs`. Returns what it found, so the caller can say so.
 */
export async function stopProcessesUnder(dir: string, killAfterMs: number): Promise<LeftoverProcess[]> {
  const all = await findProcessesUnder(dir);
  // A worker is stopped by its group's leader (a signal of its own could mean something else to
  // it: SIGINT asks PostgreSQL's checkpointer for a checkpoint).
  const pids = new Set(all.map((p) => p.pid));
  const leftovers = all.filter((p) => p.pgid === p.pid || !pids.has(p.pgid));
  for (const p of leftovers) signalGroup(p.pid, stopSignalOf(p));
  const deadline = Date.now() + killAfterMs;
  while (leftovers.some((p) => alive(p.pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  for (const p of leftovers) if (alive(p.pid)) signalGroup(p.pid, 'SIGKILL');
  return leftovers;
}
