/**
 * The cell's public API: the agent, the executor and engine interfaces with their
 * implementations, the lease keeper and the network fencer. The protocol it speaks with control
 * is in protocol/.
 */
export { CellAgent, DEFAULT_CELL_AGENT_OPTIONS, defaultCellDataDir, type CellAgentOptions } from './cell-agent';
export type { Executor, InstanceHandle, InstanceStatus, StopOptions, ExitListener } from './executor';
export { ProcessExecutor, DEFAULT_PROCESS_EXECUTOR_OPTIONS, type ProcessExecutorOptions } from './executor-process';
export { DockerExecutor, DEFAULT_DOCKER_IMAGES, type DockerExecutorOptions } from './executor-docker';
export type { Availability, Engine, EngineContext, LaunchCommand, ReplicationPosition } from './engine';
export { RedisEngine, type RedisEngineOptions } from './engine-redis';
export { PostgresEngine, lsnToValue, type PostgresEngineOptions } from './engine-postgres';
export { TcpEngine } from './engine-tcp';
export {
  createEngineRegistry,
  availableEngines,
  type EngineRegistry,
  type EngineRegistryOptions,
} from './engine-registry';
export { LeaseKeeper, type LeaseKeeperOptions } from './lease-keeper';
export { NetworkFencer, type NetworkFencerOptions, type NetworkFenceMode } from './fencer-network';
export { parsePortRange, DEFAULT_PORT_RANGE, type PortRange } from './port-allocator';
export { checkEpoch, volumePaths, type InstanceMeta } from './instance-volume';
