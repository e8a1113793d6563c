/**
 * The descriptor table, sized for the connection budget before the first client.
 *
 * Linux grows a process's descriptor table by doubling as descriptors are opened, and in a process
 * with threads (a Node process always has some) each growth waits for an RCU grace period:
 * 8-20 ms on a two-vCPU VM, during which every thread that needs a descriptor beyond the old table
 * waits too. A router that starts (or restarts: every client reconnecting at once) and takes its
 * first 8,000 connections grows the table six times, from 256 slots to 16,384, and its accept path
 * stalls each time. Growing it once at start, to what the connection limit can hold, moves that
 * cost to the start (one growth) at 8 bytes per slot (e.g. 256 KiB for 20,000 descriptors).
 *
 * `SF_ROUTER_FD_RESERVE=off` leaves the table to grow on demand, as without the addon.
 */
import { readProcField } from './proc-file';
import { loadNativeBindings } from '../native-bindings';

/** The size of this process's descriptor table (`FDSize` of /proc/self/status), undefined where unknown. */
export function descriptorTableSize(statusFile = '/proc/self/status'): number | undefined {
  const field = readProcField(statusFile, /^FDSize:\s+(\d+)/m);
  return field === undefined ? undefined : Number(field);
}

/**
 * Grows the table so `count` more descriptors fit (capped by RLIMIT_NOFILE) and returns its size;
 * leaves it as it is without the addon or with `SF_ROUTER_FD_RESERVE=off`.
 */
export function reserveDescriptorTable(count: number, env: NodeJS.ProcessEnv = process.env): number | undefined {
  if (env.SF_ROUTER_FD_RESERVE !== 'off') loadNativeBindings()?.reserveDescriptors?.(count);
  return descriptorTableSize();
}
