/** Defaults of the cell agent, apart from the agent so the CLI can show them without loading it. */
import { DEFAULT_PORT_RANGE } from './port-allocator';

export const DEFAULT_CELL_AGENT_OPTIONS = {
  redisUrl: 'redis://127.0.0.1:6379',
  listenHost: '127.0.0.1',
  portRange: DEFAULT_PORT_RANGE,
  heartbeatTtlMs: 3_000,
  reconcileMs: 2_000,
  desiredPollMs: 30_000,
  stopInstancesOnExit: false,
  volumeCheckMs: 15_000,
} as const;

/**
 * The heartbeat period when none is given: half the registration TTL (1.5 s at the default 3 s).
 * The TTL is the time to judge a cell dead, and what a cell's primaries' lease runs on; the
 * period only has to leave a failed beat room to be tried again before the TTL runs out, which
 * the agent does a third of a period after the failure. A 1 s beat at 3 s cost the store 1,000
 * commands a second at 1,000 cells for nothing the TTL did not already give.
 */
export function defaultHeartbeatMs(heartbeatTtlMs: number): number {
  return Math.max(50, Math.floor(heartbeatTtlMs / 2));
}
