/**
 * The body of `sf cell`, loaded only when that command runs.
 */
import { hostname } from 'node:os';
import { CellAgent } from '../cell/cell-agent';
import type { EngineTlsFiles } from '../cell/engine-tls';
import { NetworkFencer } from '../cell/fencer-network';
import { parsePortRange } from '../cell/port-allocator';
import { claimPort } from '../common';
import { controlUrlForListen, ensureAdminToken } from '../control/admin-token';
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
  heartbeatMs?: string;
  heartbeatTtlMs: string;
  desiredPollMs: string;
  commitCheckTimeoutMs?: string;
  volumeCheckMs?: string;
  trustCidr: string[];
  tcpAllow: string[];
  stopInstancesOnExit?: boolean;
  metricsListen?: string;
  executor?: 'process' | 'docker';
  caDir?: string;
  caCert?: string;
  caKey?: string;
}

/**
 * The cell's certificate from the platform CA in `--ca-dir` (or the operator's CA), for the
 * addresses replicas and routers use to reach its instances; renewed when due at each start.
 */
async function cellTls(flags: CellFlags, name: string): Promise<EngineTlsFiles | undefined> {
  if ((flags.caCert === undefined) !== (flags.caKey === undefined))
    throw new UsageError('--ca-cert and --ca-key go together');
  if (!flags.caDir) {
    if (flags.caCert) throw new UsageError('--ca-cert needs --ca-dir (where the cell certificate is issued)');
    return undefined;
  }
  const { PlatformCa } = await import('../common/platform-ca');
  const ca = await PlatformCa.open(
    flags.caDir,
    {},
    flags.caCert && flags.caKey ? { certFile: flags.caCert, keyFile: flags.caKey } : undefined,
  );
  const names = [
    ...new Set([
      'localhost',
      '127.0.0.1',
      '::1',
      hostname(),
      flags.listenHost,
      flags.advertiseHost ?? flags.listenHost,
    ]),
  ].filter((n) => n !== '0.0.0.0' && n !== '::');
  const cert = await ca.ensure(`cell-${name}`, names);
  return { certFile: cert.certFile, keyFile: cert.keyFile, caFile: ca.certFile };
}

/**
 * The metrics address and the token `/metrics` takes: SF_API_TOKEN, else the token file named
 * after the address (written when missing), so the port is settled first when it is 0.
 */
async function metricsListen(flag: string): Promise<{ host: string; port: number; token: string }> {
  const { host, port } = parseHostPort(flag, '--metrics-listen');
  const chosen = port === 0 ? await claimPort(host, 0) : port;
  const { token } = await ensureAdminToken(process.env, controlUrlForListen(host, chosen));
  return { host, port: chosen, token };
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
  const tls = await cellTls(flags, flags.name);
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
    heartbeatMs: flags.heartbeatMs === undefined ? undefined : parseIntFlag(flags.heartbeatMs, '--heartbeat-ms', 50),
    heartbeatTtlMs: parseIntFlag(flags.heartbeatTtlMs, '--heartbeat-ttl-ms', 100),
    desiredPollMs: parseIntFlag(flags.desiredPollMs, '--desired-poll-ms', 100),
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
    ...(tls ? { tls } : {}),
    fencer: new NetworkFencer(),
    metricsListen: flags.metricsListen ? await metricsListen(flags.metricsListen) : undefined,
  });
  await agent.start();
  stopOnSignals(agent.logger, 'cell', () => agent.stop());
}
