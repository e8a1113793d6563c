/** Defaults of the cell agent, apart from the agent so the CLI can show them without loading it. */
import { DEFAULT_PORT_RANGE } from './port-allocator';

export const DEFAULT_CELL_AGENT_OPTIONS = {
  redisUrl: 'redis://127.0.0.1:6379',
  listenHost: '127.0.0.1',
  portRange: DEFAULT_PORT_RANGE,
  heartbeatMs: 1_000,
  heartbeatTtlMs: 3_000,
  reconcileMs: 2_000,
  desiredPollMs: 30_000,
  stopInstancesOnExit: false,
  volumeCheckMs: 15_000,
} as const;
