/**
 * The body of `sf cell`, loaded only when that command runs.
 */
import { CellAgent } from '../cell/cell-agent';
import { NetworkFencer } from '../cell/fencer-network';
import { parsePortRange } from '../cell/port-allocator';
import { UsageError, parseHostPort, parseIntFlag, stopOnSignals } from './cli-support';

export interface CellFlags {
  name?: string;
  zone?: string;
  capacityMb?: string;
  redis?: string;
  keyPrefix?: string;
  dataDir?: string;
  listenHost: string;
  advertiseHost?: string;
  portRange: string;
  heartbeatMs: string;
  heartbeatTtlMs: string;
  commitCheckTimeoutMs?: string;
  volumeCheckMs?: string;
  trustCidr: string[];
  tcpAllow: string[];
  stopInstancesOnExit?: boolean;
  metricsListen?: string;
  executor?: 'process' | 'docker';
}

export async function runCell(flags: CellFlags): Promise<void> {
  if (!flags.name) throw new UsageError('--name is required');
  if (!flags.zone) throw new UsageError('--zone is required');
  if (!flags.capacityMb) throw new UsageError('--capacity-mb is required');
  let portRange;
  try {
    portRange = parsePortRange(flags.portRange);
  } catch (err) {
    throw new UsageError(`--port-range: ${(err as Error).message}`);
  }
  const agent = new CellAgent({
    name: flags.name,
    zone: flags.zone,
    capacityMb: parseIntFlag(flags.capacityMb, '--capacity-mb', 1),
    redisUrl: flags.redis ?? process.env.SF_REDIS_URL,
    keyPrefix: flags.keyPrefix ?? process.env.SF_KEY_PREFIX,
    dataDir: flags.dataDir,
    listenHost: flags.listenHost,
    advertiseHost: flags.advertiseHost,
    portRange,
    heartbeatMs: parseIntFlag(flags.heartbeatMs, '--heartbeat-ms', 50),
    heartbeatTtlMs: parseIntFlag(flags.heartbeatTtlMs, '--heartbeat-ttl-ms', 100),
    commitCheckTimeoutMs:
      flags.commitCheckTimeoutMs === undefined
        ? undefined
        : parseIntFlag(flags.commitCheckTimeoutMs, '--commit-check-timeout-ms', 100),
    volumeCheckMs:
      flags.volumeCheckMs === undefined ? undefined : parseIntFlag(flags.volumeCheckMs, '--volume-check-ms', 100),
    trustCidrs: flags.trustCidr,
    tcpAllow: flags.tcpAllow,
    stopInstancesOnExit: flags.stopInstancesOnExit === true,
    ...(flags.executor ? { defaultExecutor: flags.executor } : {}),
    fencer: new NetworkFencer(),
    metricsListen: flags.metricsListen ? parseHostPort(flags.metricsListen, '--metrics-listen') : undefined,
  });
  await agent.start();
  stopOnSignals(agent.logger, 'cell', () => agent.stop());
}
