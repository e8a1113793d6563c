/**
 * The real peers every target relays to: one redis-server (no persistence, so disk never shows
 * up in the numbers) and one `iperf3 -s`.
 */
import type { LaunchCommand } from '../../cell/engine';
import { withDescriptorTable } from '../../cell/engine-fd-table';
import { defaultListenBacklog } from '../../common/listen-backlog';
import { freePort, runToCompletion, startProcess, waitForPort, type ManagedProcess } from './processes';

export interface Backends {
  host: string;
  redisPort: number;
  iperfPort: number;
  redis: ManagedProcess;
  iperf: ManagedProcess;
}

export interface RedisOptions {
  /** @default 20000 */
  maxClients?: number;
  /** More redis-server arguments (a TLS port and its files, say). */
  args?: string[];
  /**
   * Start it as cells do (cell/engine-fd-table.ts): through bash, its descriptor table grown
   * first to hold `maxClients`; false: the kernel's table, grown on demand. @default false
   */
  growTable?: boolean;
}

/** Starts redis-server on `port` (0: no plaintext port, then the caller waits for its own). */
export async function startRedis(port: number, options: RedisOptions = {}): Promise<ManagedProcess> {
  const maxClients = options.maxClients ?? 20_000;
  const launch: LaunchCommand = {
    file: 'redis-server',
    args: [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--protected-mode',
      'no',
      '--maxclients',
      String(maxClients),
      // Its queue as deep as the proxies' (common/listen-backlog.ts), so a storm through a proxy
      // meets the proxy's queue and not a shorter one behind it.
      '--tcp-backlog',
      String(defaultListenBacklog()),
      '--daemonize',
      'no',
      '--loglevel',
      'warning',
      ...(options.args ?? []),
    ],
    stopSignal: 'SIGTERM',
  };
  const started = options.growTable === true ? withDescriptorTable(launch, maxClients + 32, 'bash') : launch;
  // redis lowers maxclients to fit RLIMIT_NOFILE, so raise it for the idle-connection runs.
  const proc = startProcess('redis-server', started.file, started.args, { fileLimit: maxClients + 1024 });
  if (port > 0) await waitForPort(port, proc);
  return proc;
}

export async function startBackends(): Promise<Backends> {
  const redisPort = await freePort();
  const iperfPort = await freePort();
  const redis = await startRedis(redisPort);
  const iperf = startProcess('iperf3 -s', 'iperf3', ['-s', '-p', String(iperfPort), '-B', '127.0.0.1']);
  await waitForPort(iperfPort, iperf);
  return { host: '127.0.0.1', redisPort, iperfPort, redis, iperf };
}

export async function redisServerVersion(): Promise<string> {
  const result = await runToCompletion('redis-server', 'redis-server', ['--version']);
  return result.stdout.trim();
}
