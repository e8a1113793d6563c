/**
 * `sf up` as an operator runs it, on free ports under a temporary SF_HOME, with helpers the
 * restart, supervisor and store-loss tests share: create services through the CLI, read and write
 * through the router, list the volumes on disk, read the component PIDs `sf up` records.
 */
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import type { ServiceView } from '../../control/services';
import { fetchWithCa, type CaFetchInit } from '../../common/https-fetch';
import { freePort } from './free-port';
import { freePortBlock, releasePortBlock, removeContainers } from './service-cluster';
import type { ServiceKeyAuth } from './service-key';
import { runSf, runSfToExit, type SfProcess } from './sf-process';
import { eventually, sleep } from './tcp-client';

const run = promisify(execFile);

export interface UpPlatform {
  home: string;
  dataDir: string;
  env: NodeJS.ProcessEnv;
  /** The control API's URL (https unless started with --no-control-https). */
  controlUrl: string;
  /** fetch to control, verified against the platform CA when it is https. */
  controlFetch(path: string, init?: CaFetchInit): Promise<Response>;
  ports: { control: number; admin: number; redis: number; routeBase: number; cellBase: number };
  up: SfProcess | undefined;
  /** Starts `sf up` and resolves once it printed its banner. */
  start(timeoutMs?: number): Promise<SfProcess>;
  /** SIGINT (Ctrl-C) and wait for the exit code. */
  interrupt(): Promise<number | null>;
  sf(args: string[]): Promise<{ code: number | null; output: string }>;
  service(name: string): Promise<ServiceView>;
  /** `sf create-service-key NAME KEY`: nothing answers without credentials. */
  serviceKey(name: string, key?: string): Promise<ServiceKeyAuth>;
  /** `cell/instanceId` of every volume directory on disk. */
  volumes(): Promise<string[]>;
  /** name -> pid of each component `sf up` supervises, from DATA/up-processes.json. */
  pids(): Promise<Record<string, number>>;
  /** Stops `sf up` and removes the temporary home. */
  cleanup(): Promise<void>;
}

export async function createUpPlatform(
  cells = 3,
  extraArgs: string[] = [],
  extraEnv: NodeJS.ProcessEnv = {},
): Promise<UpPlatform> {
  const home = await mkdtemp(path.join(tmpdir(), 'sf-up-'));
  // As root, cells run PostgreSQL as the postgres user, which must reach the volumes.
  await chmod(home, 0o755);
  const ports = {
    control: await freePort(),
    admin: await freePort(),
    redis: await freePort(),
    routeBase: await freePortBlock(),
    cellBase: await freePortBlock(100 * cells),
  };
  const env: NodeJS.ProcessEnv = {
    SF_HOME: home,
    SF_REDIS_URL: '',
    SF_API_TOKEN: '',
    // sf up serves control over HTTPS by default; the CLI finds the CA through SF_HOME (the
    // record sf up writes there), so no SF_CA_FILE. A platform started with --no-control-https
    // is plain HTTP.
    SF_CONTROL_URL: `${extraArgs.includes('--no-control-https') ? 'http' : 'https'}://127.0.0.1:${ports.control}`,
    SF_LOG_LEVEL: 'info',
    ...extraEnv,
  };
  const dataDir = path.join(home, 'data');
  const args = [
    'up',
    '--data-dir',
    dataDir,
    '--cells',
    String(cells),
    '--control-port',
    String(ports.control),
    '--router-admin-port',
    String(ports.admin),
    '--redis-port',
    String(ports.redis),
    '--cell-port-base',
    String(ports.cellBase),
    '--route-ports',
    `${ports.routeBase}-${ports.routeBase + 99}`,
    '--cell-metrics-port-base',
    '0',
    ...extraArgs,
  ];
  const controlUrl = env.SF_CONTROL_URL!;
  const platform: UpPlatform = {
    home,
    dataDir,
    env,
    controlUrl,
    async controlFetch(p, init = {}) {
      return fetchWithCa(`${controlUrl}${p}`, init, await readFile(path.join(dataDir, 'ca.pem')));
    },
    ports,
    up: undefined,
    async start(timeoutMs = 90_000) {
      const up = runSf(args, env);
      platform.up = up;
      await eventually(() => up.output().includes('Try next:') || up.child.exitCode !== null, timeoutMs, 'sf up ready');
      if (up.child.exitCode !== null) throw new Error(`sf up exited: ${up.output()}`);
      return up;
    },
    async interrupt() {
      const up = platform.up;
      if (!up || up.child.exitCode !== null || up.child.signalCode !== null) return up?.child.exitCode ?? null;
      const exited = new Promise<number | null>((r) => up.child.once('exit', (code) => r(code)));
      up.child.kill('SIGINT');
      return exited;
    },
    sf: (a) => runSfToExit(a, env),
    async service(name) {
      const res = await runSfToExit(['service', name, '--json'], env);
      if (res.code !== 0) throw new Error(`sf service ${name}: ${res.output}`);
      return JSON.parse(res.output) as ServiceView;
    },
    async serviceKey(name, key = 'test') {
      const res = await runSfToExit(['create-service-key', name, key, '--json'], env);
      if (res.code !== 0) throw new Error(`sf create-service-key ${name} ${key}: ${res.output}`);
      const body = JSON.parse(res.output) as ServiceKeyAuth & { ca_certificate?: string; ca_file?: string };
      // Services under sf up require TLS by default: the key says how to verify the router.
      const ca = body.ca_certificate && body.ca_file ? { pem: body.ca_certificate, file: body.ca_file } : undefined;
      return { username: body.username, password: body.password, ...(ca ? { ca } : {}) };
    },
    async volumes() {
      const out: string[] = [];
      const cellsDir = path.join(dataDir, 'cells');
      for (const cell of await readdir(cellsDir).catch(() => [] as string[])) {
        for (const id of await readdir(path.join(cellsDir, cell, 'instances')).catch(() => [] as string[]))
          out.push(`${cell}/${id}`);
      }
      return out.sort();
    },
    async pids() {
      return JSON.parse(await readFile(path.join(dataDir, 'up-processes.json'), 'utf8')) as Record<string, number>;
    },
    async cleanup() {
      await platform.interrupt();
      // Engines outlive a SIGKILLed cell; each volume record holds its engine's pid.
      for (const v of await platform.volumes()) {
        const [cell, id] = v.split('/');
        const meta = await readFile(path.join(dataDir, 'cells', cell!, 'instances', id!, 'sf-instance.json'), 'utf8')
          .then((t) => JSON.parse(t) as { pid?: number | null })
          .catch(() => ({ pid: null }));
        if (!meta.pid) continue;
        // Only a process working in this platform's directory: a recorded pid may have been reused.
        const cwd = await readlink(`/proc/${meta.pid}/cwd`).catch(() => '');
        if (!cwd.startsWith(home)) continue;
        for (const target of [-meta.pid, meta.pid]) {
          try {
            process.kill(target, 'SIGKILL');
          } catch {
            // Already gone.
          }
        }
      }
      // Containers too, on the docker executor: they carry their cell's data directory.
      if (env.DOCKER_HOST) await removeContainers(env.DOCKER_HOST, home);
      await sleep(200);
      // SF_TEST_KEEP_HOME=1 keeps logs and volumes of a failed run for a look.
      if (process.env.SF_TEST_KEEP_HOME) process.stdout.write(`      sf up home kept: ${home}\n`);
      else await rm(home, { recursive: true, force: true });
      releasePortBlock(ports.routeBase);
      releasePortBlock(ports.cellBase);
    },
  };
  return platform;
}

/**
 * psql through the router as a service key's user; the password travels in the environment. A
 * key with a CA connects with sslmode=verify-full.
 */
export async function psql(port: number, auth: ServiceKeyAuth, sql: string, timeoutMs = 5_000): Promise<string> {
  const ssl = auth.ca ? { PGSSLMODE: 'verify-full', PGSSLROOTCERT: auth.ca.file } : {};
  const { stdout } = await run(
    'psql',
    ['-h', '127.0.0.1', '-p', String(port), '-U', auth.username, '-d', 'postgres', '-At', '-c', sql],
    { timeout: timeoutMs, env: { ...process.env, PGCONNECT_TIMEOUT: '2', PGPASSWORD: auth.password, ...ssl } },
  );
  return stdout.trim();
}

/** One Redis command through the router on a fresh connection as a key's user (TLS with a key's CA); null on any error. */
export async function redisThrough(
  port: number,
  auth: ServiceKeyAuth,
  ...cmd: [string, ...string[]]
): Promise<unknown> {
  const client = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
    connectTimeout: 2_000,
    commandTimeout: 2_000,
    username: auth.username,
    password: auth.password,
    ...(auth.ca ? { tls: { ca: auth.ca.pem, servername: 'localhost' } } : {}),
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await client.call(...cmd);
  } catch {
    return null;
  } finally {
    client.disconnect();
  }
}

/** Polls until `check` holds; returns the milliseconds it took. */
export async function timeUntil(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const t0 = performance.now();
  await eventually(async () => check().catch(() => false), timeoutMs, what);
  return performance.now() - t0;
}
