/**
 * Engines start with their descriptor table already as big as their client limit needs.
 *
 * Linux grows a process's descriptor table by doubling as descriptors are opened, and in a process
 * with threads (redis-server has its background I/O threads) each growth waits for an RCU grace
 * period, 8-20 ms on a small VM, during which the server accepts nothing more. An engine that
 * has had few clients, a replica just promoted above all, meets the reconnect storm of a failover
 * with a table of 256 slots: 8,000 clients connecting at once to a fresh redis-server grew it five
 * times, its listen queue overflowed meanwhile, and the last clients were served after a 1-2 s SYN
 * retransmit; with the table grown at start, within 0.2-0.55 s.
 *
 * The kernel never shrinks a table, and `execve` keeps it: so the engine is started through bash,
 * which opens a descriptor at the highest number the engine will need, closes it, and replaces
 * itself with the engine (same PID, no descriptor left over). Where bash cannot do it (a limit
 * below that number even after raising the soft limit to the hard one) the engine starts anyway,
 * with the table the kernel gives it.
 */
import type { LaunchCommand } from './engine';

/** Script run as `bash -c SCRIPT sf-engine SLOTS FILE ARGS...`. */
const GROW_TABLE_THEN_EXEC = [
  'slots=$1; shift',
  'soft=$(ulimit -Sn); hard=$(ulimit -Hn)',
  '[ "$hard" != unlimited ] && [ "$slots" -ge "$hard" ] && slots=$((hard - 1))',
  '[ "$soft" != unlimited ] && [ "$soft" -le "$slots" ] && ulimit -Sn $((slots + 1))',
  'eval "exec $slots</dev/null $slots<&-" 2>/dev/null',
  'exec "$@"',
].join('\n');

/**
 * `launch` run through `bash` (a path, or a name the container's PATH finds) so that the engine
 * starts with room for `slots` descriptors.
 */
export function withDescriptorTable(launch: LaunchCommand, slots: number, bash: string): LaunchCommand {
  if (!Number.isSafeInteger(slots) || slots < 1)
    throw new RangeError(`descriptor slots must be a positive integer, got ${slots}`);
  return {
    ...launch,
    file: bash,
    args: ['-c', GROW_TABLE_THEN_EXEC, 'sf-engine', String(slots), launch.file, ...launch.args],
  };
}
