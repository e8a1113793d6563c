/**
 * CPU time of a process tree from /proc, summed over the process group the harness started it
 * in. On a shared machine throughput moves with everyone else's load; the CPU a proxy spends per
 * request or per connection moves much less, so it is the steadier figure when comparing builds.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** USER_HZ: /proc reports utime and stime in these ticks; 100 on every Linux port in use. */
const TICKS_PER_SECOND = 100;

/** User plus system CPU seconds of every live process in the group (all threads included). */
export function groupCpuSeconds(groupId: number): number {
  let ticks = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name may contain spaces; fields after it start with the state (field 3).
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) !== groupId) continue;
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // The process exited between listing and reading.
    }
  }
  return ticks / TICKS_PER_SECOND;
}

/**
 * Context switches (voluntary and not) of every thread of one process: how often it slept and
 * was woken, or was preempted. A relay that hands a backend its requests in fewer, larger bursts
 * lets the backend sleep less often per request.
 */
export function processSwitches(pid: number): number {
  let switches = 0;
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  for (const tid of tasks) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      for (const m of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)) switches += Number(m[1]);
    } catch {
      // The thread exited between listing and reading.
    }
  }
  return switches;
}

/**
 * Seconds every CPU of the host spent idle (idle plus iowait), summed. A proxy that sleeps
 * between bursts can leave a CPU idle while the clients and the backend wait for each other; the
 * share of idle time over a run shows it where CPU per connection does not.
 */
export function hostIdleSeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  const fields = line.trim().split(/\s+/).slice(1).map(Number);
  return (fields[3] + fields[4]) / TICKS_PER_SECOND;
}
