/**
 * Finds and ends, by PID, the processes a test platform left behind. A platform's cells run every
 * engine with a path under the platform's own data directory (a fresh `mkdtemp`) on its command
 * line (`redis-server DIR/cell-1/instances/x/data/redis.conf`, `postgres -D DIR/...`), so that
 * path names exactly what this platform started and nothing another suite or session runs.
 */
import { readFile, readdir } from 'node:fs/promises';

/** PIDs (other than this process) whose command line mentions `dir`. */
export async function processesUnder(dir: string): Promise<number[]> {
  if (dir.length < 8) throw new Error(`refusing to look for processes under a short path: ${dir}`);
  const pids: number[] = [];
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').some((arg) => arg.includes(dir))) pids.push(pid);
  }
  return pids;
}

/** SIGKILLs every process under `dir` (and its process group when it leads one); returns the PIDs. */
export async function killProcessesUnder(dir: string): Promise<number[]> {
  const pids = await processesUnder(dir);
  for (const pid of pids)
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // Not a group leader, or gone already.
      }
    }
  return pids;
}
