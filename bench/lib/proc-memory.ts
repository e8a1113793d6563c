/**
 * Resident memory of a process tree from /proc, summed over the process group the harness
 * started it in, so a router with worker processes is measured whole.
 */
import { readdirSync, readFileSync } from 'node:fs';

export interface MemorySample {
  /** Sum of VmRSS over the group, in KiB. */
  rssKiB: number;
  /** Sum of VmHWM (peak RSS) over the group, in KiB. */
  peakKiB: number;
  pids: number[];
}

function statusField(status: string, field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
  return match ? Number(match[1]) : 0;
}

/** Field 5 of /proc/PID/stat is the process group; the command name may contain spaces. */
function processGroup(pid: string): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[2]);
  } catch {
    return undefined;
  }
}

export function groupMemory(groupId: number): MemorySample {
  const sample: MemorySample = { rssKiB: 0, peakKiB: 0, pids: [] };
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || processGroup(entry) !== groupId) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      sample.rssKiB += statusField(status, 'VmRSS');
      sample.peakKiB += statusField(status, 'VmHWM');
      sample.pids.push(Number(entry));
    } catch {
      // The process exited between listing and reading.
    }
  }
  return sample;
}

/** Open file descriptors of one process (the router's sockets show up here). */
export function openFileCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}
