/**
 * A whole platform for service tests, every part real: a redis-server for state, one or two
 * controls (in-process, fast leader timings), a router and cells as `sf` child processes on free
 * ports, with route ports and instance ports picked to avoid other suites. `stop()` ends every
 * process it started, including engines left behind by a SIGKILLed cell.
 */
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { DockerApi } from '../../cell/docker-api';
import { type ActualInstance } from '../../protocol/cell-protocol';
import type { ControlServerOptions } from '../../control/control-server';
import type { ServicePlaneOptions, ServiceView } from '../../control';
import { startControlHarness, type ControlHarness } from './control-harness';
import { freePort } from './free-port';
import { killProcessesUnder } from './process-sweep';
import { startRedisServer, type RedisServerHandle } from './redis-server';
import { ROUTER_ADMIN_TOKEN, runSf, waitForHealth, type SfProcess } from './sf-process';
import { eventually } from './tcp-client';
import { DEFAULT_KEY_PREFIX, keyLayout } from '../../protocol/keys';

export interface ClusterOptions {
  cells?: number;
  controls?: number;
  /** @default 4096 */
  capacityMb?: number;
  /** Service plane options merged over FAST_SERVICE_PLANE (e.g. failover timings). */
  services?: ServicePlaneOptions;
  /** Prefix of every Redis key, given to control, router and cells alike. @default 'sf:' */
  keyPrefix?: string;
  /** Extra `sf cell` flags for every cell (e.g. `--volume-check-ms 500`). */
  cellArgs?: string[];
  /** Extra environment of every cell (e.g. `DOCKER_HOST` of a private daemon). */
  cellEnv?: NodeJS.ProcessEnv;
}

export interface CellProcess {
  name: string;
  zone: string;
  proc: SfProcess;
}

export interface ServiceCluster {
  redis: RedisServerHandle;
  /** A command connection to the state Redis, for assertions. */
  state: Redis;
  controls: ControlHarness[];
  cells: CellProcess[];
  router: SfProcess;
  routerAdminPort: number;
  routePorts: [number, number];
  dataDir: string;
  /** The API of the first control still running. */
  api: ControlHarness['api'];
  /** Closes a control (its lock is released; the other becomes leader). */
  stopControl(index: number): Promise<void>;
  startCell(name: string, zone: string): Promise<CellProcess>;
  waitForService(name: string, timeoutMs?: number, check?: (v: ServiceView) => boolean): Promise<ServiceView>;
  stop(): Promise<void>;
}

/** Leader timings short enough for failover tests, long enough for a loaded CI machine. */
export const FAST_SERVICE_PLANE = { leaderTtlMs: 1_500, leaderRenewMs: 300, convergencePollMs: 300 } as const;

/** Blocks handed out and not yet released, as [first, end) ranges: never handed out twice. */
const heldBlocks = new Map<number, number>();
/** Blocks released earlier in this process: tried last, so a just-stopped cluster's ports rest. */
const releasedBlocks = new Map<number, number>();

/**
 * Local ports of every TCP socket the kernel lists, TIME_WAIT included: a port a connection of an
 * earlier test still holds passes `canBind` (Node listens with SO_REUSEADDR) but not a bind
 * without it, which a steered port's reservation makes.
 */
function tcpPortsInUse(): Set<number> {
  const ports = new Set<number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // no IPv6 here
    }
    for (const line of text.split('\n').slice(1)) {
      const local = line.trim().split(/\s+/)[1];
      const port = local?.slice(local.lastIndexOf(':') + 1);
      if (port) ports.add(parseInt(port, 16));
    }
  }
  return ports;
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

function overlaps(blocks: Map<number, number>, base: number, size: number): boolean {
  for (const [first, end] of blocks) if (base < end && first < base + size) return true;
  return false;
}

/**
 * A block of `size` free ports between 22000 and 29999: below the kernel's ephemeral range
 * (32768+), where other suites' free ports and outgoing connections live, and checked port by
 * port. The block stays held until `releasePortBlock`: a free port is not proof that nobody owns
 * it, since a cluster's route ports listen only once its services exist, and a cell's range
 * handed out again as another cell's or a router's made an engine and a route share a port.
 */
export async function freePortBlock(size = 100): Promise<number> {
  const bases = Array.from({ length: Math.floor((8_000 - size) / 100) + 1 }, (_, i) => 22_000 + i * 100);
  for (let i = bases.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [bases[i], bases[j]] = [bases[j], bases[i]];
  }
  // Blocks overlapping a released one come last: a long suite starts more clusters than there are
  // blocks, and a released port may still be taken by a connection in TIME_WAIT, which a bind
  // without SO_REUSEADDR (a steered port's reservation) is refused.
  const used = (b: number): boolean => overlaps(releasedBlocks, b, size);
  const ordered = [...bases.filter((b) => !used(b)), ...bases.filter(used)];
  const inUse = tcpPortsInUse();
  for (const base of ordered) {
    if (overlaps(heldBlocks, base, size)) continue;
    if (Array.from({ length: size }, (_, i) => base + i).some((p) => inUse.has(p))) continue;
    // Held before the asynchronous check, so a concurrent caller cannot take the same block.
    heldBlocks.set(base, base + size);
    const checks = await Promise.all(Array.from({ length: size }, (_, i) => canBind(base + i)));
    if (checks.every(Boolean)) return base;
    heldBlocks.delete(base);
  }
  throw new Error(`no free block of ${size} ports between 22000 and 29999 (${heldBlocks.size} held)`);
}

/** Gives back a block from `freePortBlock` once nothing of its owner listens on it any more. */
export function releasePortBlock(base: number): void {
  const end = heldBlocks.get(base);
  if (end !== undefined && heldBlocks.delete(base)) releasedBlocks.set(base, end);
}

/** Removes every container (engine or sidecar) whose cell's data directory lies under `dataDir`. */
export async function removeContainers(dockerHost: string, dataDir: string): Promise<void> {
  const api = new DockerApi({ socketPath: dockerHost.replace(/^unix:\/\//, '') });
  const res = await api.call('GET', '/containers/json?all=1').catch(() => undefined);
  const list = (res?.body ?? []) as Array<{ Id: string; Labels: Record<string, string> }>;
  for (const c of list)
    if (Object.entries(c.Labels ?? {}).some(([k, v]) => k.endsWith('cell-data-dir') && v.startsWith(dataDir)))
      await api.call('DELETE', `/containers/${c.Id}?force=true`).catch(() => undefined);
}

export async function startServiceCluster(options: ClusterOptions = {}): Promise<ServiceCluster> {
  const keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
  const KEYS = keyLayout(keyPrefix);
  const redis = await startRedisServer();
  const state = new Redis(redis.url);
  const dataDir = await mkdtemp(path.join(tmpdir(), 'sf-services-'));
  // Postgres runs as the postgres user when the tests run as root: it must reach its volume.
  await chmod(dataDir, 0o755);
  const routeBase = await freePortBlock();
  const blocks = [routeBase];
  const routePorts: [number, number] = [routeBase, routeBase + 99];
  const controlOptions: ControlServerOptions = {
    defaultReservablePorts: `${routePorts[0]}-${routePorts[1]}`,
    keyPrefix,
    services: { ...FAST_SERVICE_PLANE },
  };
  const controls: ControlHarness[] = [];
  for (let i = 0; i < (options.controls ?? 1); i++)
    controls.push(
      await startControlHarness(
        { ...controlOptions, services: { ...FAST_SERVICE_PLANE, ...options.services, holderId: `control-${i + 1}` } },
        redis,
      ),
    );
  const routerAdminPort = await freePort();
  const router = runSf(
    [
      'router',
      '--redis',
      redis.url,
      '--key-prefix',
      keyPrefix,
      '--router-group',
      'default',
      '--admin',
      `127.0.0.1:${routerAdminPort}`,
    ],
    { SF_LOG_LEVEL: 'warn', SF_API_TOKEN: ROUTER_ADMIN_TOKEN },
  );
  const cells: CellProcess[] = [];
  const stopped = new Set<ControlHarness>();
  const cluster: ServiceCluster = {
    redis,
    state,
    controls,
    cells,
    router,
    routerAdminPort,
    routePorts,
    dataDir,
    api: (...args) => (controls.find((c) => !stopped.has(c)) ?? controls[0]).api(...args),
    async stopControl(index) {
      stopped.add(controls[index]);
      await controls[index].stop();
    },
    async startCell(name, zone) {
      const from = await freePortBlock();
      blocks.push(from);
      const proc = runSf(
        [
          'cell',
          '--name',
          name,
          '--zone',
          zone,
          '--capacity-mb',
          String(options.capacityMb ?? 4096),
          '--redis',
          redis.url,
          '--key-prefix',
          keyPrefix,
          '--data-dir',
          path.join(dataDir, name),
          '--port-range',
          `${from}-${from + 99}`,
          '--heartbeat-ms',
          '200',
          '--heartbeat-ttl-ms',
          '1000',
          '--stop-instances-on-exit',
          ...(options.cellArgs ?? []),
        ],
        // SF_TEST_CELL_LOG_LEVEL=info keeps each step of the cells in their output, for profiling.
        { SF_LOG_LEVEL: process.env.SF_TEST_CELL_LOG_LEVEL ?? 'warn', ...options.cellEnv },
      );
      const cell = { name, zone, proc };
      cells.push(cell);
      try {
        await eventually(
          async () => (await state.exists(KEYS.cell(name).registration)) === 1,
          30_000,
          `cell ${name} registered`,
        );
      } catch (err) {
        throw new Error(
          `${(err as Error).message}; cell output: ${proc.output().slice(-2000)} (exit ${proc.child.exitCode ?? proc.child.signalCode})`,
          { cause: err },
        );
      }
      return cell;
    },
    async waitForService(name, timeoutMs = 60_000, check = (v) => v.status === 'running') {
      let last: ServiceView | undefined;
      try {
        await eventually(
          async () => {
            const res = await cluster.api<ServiceView>('GET', `/v3/service_instances/${name}`);
            last = res.body;
            return res.status === 200 && check(res.body);
          },
          timeoutMs,
          `service ${name}`,
        );
      } catch (err) {
        // The view as it was when the wait gave up, not when it began.
        const seen = `${JSON.stringify(last?.status)} ${JSON.stringify(last?.instances?.map((i) => [i.id, i.state, i.last_error?.message, i.sidecars]))}`;
        throw new Error(`${(err as Error).message} (last seen: ${seen})`, { cause: err });
      }
      return last as ServiceView;
    },
    async stop() {
      // Each part is stopped whatever happened to the one before: a failed step must not leave
      // the state Redis or an engine running.
      const attempt = async (work: () => Promise<unknown>): Promise<void> => {
        await work().catch(() => undefined);
      };
      await attempt(() => Promise.all(cells.map((c) => c.proc.stop())));
      await attempt(() => router.stop());
      // Engines of a cell that was SIGKILLed outlive it; their pids are in the actual hashes.
      await attempt(async () => {
        for (const name of await state.smembers(KEYS.cells)) {
          for (const text of Object.values(await state.hgetall(KEYS.cell(name).actual))) {
            const pid = (JSON.parse(text) as ActualInstance).pid;
            if (!pid) continue;
            for (const target of [-pid, pid]) {
              try {
                process.kill(target, 'SIGKILL');
              } catch {
                // Already gone.
              }
            }
          }
        }
      });
      // Whatever else runs with this platform's data directory on its command line (an engine
      // whose cell forgot it, or a cell that did not stop): found in /proc, ended by pid.
      await attempt(() => killProcessesUnder(dataDir));
      // Containers of a SIGKILLed cell outlive it too; they carry the cell's data directory.
      if (options.cellEnv?.DOCKER_HOST) await attempt(() => removeContainers(options.cellEnv!.DOCKER_HOST!, dataDir));
      for (const c of controls) if (!stopped.has(c)) await attempt(() => c.stop());
      state.disconnect();
      await redis.stop();
      await rm(dataDir, { recursive: true, force: true });
      for (const base of blocks) releasePortBlock(base);
    },
  };
  try {
    await waitForHealth(routerAdminPort, 60_000);
    for (let i = 1; i <= (options.cells ?? 3); i++) await cluster.startCell(`cell-${i}`, `z${i}`);
  } catch (err) {
    // A start that fails midway stops what it started: the suite's `after` never sees a cluster.
    await cluster.stop().catch(() => undefined);
    throw err;
  }
  return cluster;
}

/**
 * Starts one cluster for the enclosing `describe` (before) and stops it (after); returns a getter
 * for the running cluster. Options may be a function, read when the cluster starts (a daemon's
 * socket known only from an earlier hook).
 */
export function useServiceCluster(options: ClusterOptions | (() => ClusterOptions) = {}): () => ServiceCluster {
  let cluster: ServiceCluster | undefined;
  before(async () => {
    cluster = await startServiceCluster(typeof options === 'function' ? options() : options);
  });
  after(async () => {
    await cluster?.stop();
  });
  return () => {
    if (!cluster) throw new Error('the service cluster is not running');
    return cluster;
  };
}
