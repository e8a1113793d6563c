/**
 * `sf up`: the whole platform on one machine, as child processes of this one — a local
 * redis-server for state (unless SF_REDIS_URL names one), control, one router and N cells in
 * their own data directories, under a supervisor (cli/supervisor.ts) that restarts any of them
 * that exits, with backoff. Only SIGINT/SIGTERM stop everything, in a safe order.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { controlUrlForListen, ensureAdminToken, sfHome } from '../control/admin-token';
import { UsageError, exitWithError, parseIntFlag } from './cli-support';
import { redactRedisUrl } from '../common/redis-credentials';
import { DEFAULT_KEY_PREFIX } from '../protocol/keys';
import { cellAclUser } from '../protocol/acl';
import { prepareLockedStateStore, type LockedStateStore } from './state-store-acl';
import { Supervisor } from './supervisor';
import { stopProcessesUnder } from './leftover-engines';
import { caPemFile, preparePlatformCa } from './up-platform-ca';
import { removeLocalControl, writeLocalControl } from './local-control';
import { fetchWithCa } from '../common/https-fetch';

interface UpFlags {
  dataDir?: string;
  cells: string;
  controlPort: string;
  routerAdminPort: string;
  redisPort: string;
  cellPortBase: string;
  capacityMb: string;
  routePorts?: string;
  cellMetricsPortBase: string;
  caCert?: string;
  caKey?: string;
  controlHttps?: boolean;
  executor?: string;
  stopTimeout: string;
}

/** @default values of `sf up` (DESIGN.md default addresses) */
export const DEFAULT_UP_OPTIONS = {
  cells: 3,
  controlPort: 7600,
  routerAdminPort: 7601,
  redisPort: 7650,
  /** Cell N gets instance ports base+100*(N-1) .. +99. */
  cellPortBase: 20000,
  capacityMb: 4096,
  /** Cell N serves /metrics on base+N-1; 0 lets each cell pick a free port. */
  cellMetricsPortBase: 7700,
  /**
   * Seconds each component gets to stop on Ctrl-C before SIGKILL: a cell stops its engines
   * cleanly first, and a PostgreSQL shutdown checkpoint at load takes seconds.
   */
  stopTimeoutS: 30,
} as const;

/**
 * Root's home is closed to the `postgres` user the cells run PostgreSQL as, so root keeps the
 * platform's data under /var/lib (as `sf cell` does); everyone else under SF_HOME.
 */
export function defaultUpDataDir(): string {
  return process.getuid?.() === 0 ? '/var/lib/service-foundry/up' : join(sfHome(), 'up');
}

function portFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolvePort) => {
    const srv = createServer();
    srv.once('error', () => resolvePort(false));
    srv.listen(port, host, () => srv.close(() => resolvePort(true)));
  });
}

/**
 * How long start-up waits for each component to answer. Node alone takes 20 s to start a router
 * on a 2-core machine at load average 30, so this is generous; a component that keeps exiting
 * stops the wait earlier (START_RESTART_LIMIT).
 */
const START_TIMEOUT_MS = 90_000;

/** Start-up gives up on a component that keeps exiting; later, the supervisor never does. */
const START_RESTART_LIMIT = 3;

/** @default ms between an `sf up` cell's heartbeats (its registration TTL stays the default 3 s) */
export const UP_CELL_HEARTBEAT_MS = 1_000;

async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  supervisor: Supervisor,
  names: string[],
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    const failing = names.find((n) => supervisor.restarts(n) >= START_RESTART_LIMIT);
    if (failing)
      throw new Error(`${failing} keeps exiting while waiting for ${what}; see ${supervisor.logOf(failing)}`);
    if (Date.now() > deadline) throw new Error(`${what} not ready after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function runUp(flags: UpFlags): Promise<void> {
  const cellCount = parseIntFlag(flags.cells, '--cells', 1, 50);
  const controlPort = parseIntFlag(flags.controlPort, '--control-port', 1, 65535);
  const routerAdminPort = parseIntFlag(flags.routerAdminPort, '--router-admin-port', 1, 65535);
  const redisPort = parseIntFlag(flags.redisPort, '--redis-port', 1, 65535);
  const cellPortBase = parseIntFlag(flags.cellPortBase, '--cell-port-base', 1024, 65535 - 100 * cellCount);
  const capacityMb = parseIntFlag(flags.capacityMb, '--capacity-mb', 1);
  const stopTimeoutMs = parseIntFlag(flags.stopTimeout, '--stop-timeout', 1, 3600) * 1000;
  const metricsBase = parseIntFlag(flags.cellMetricsPortBase, '--cell-metrics-port-base', 0, 65535 - cellCount);
  const cellMetricsPort = (n: number): number => (metricsBase === 0 ? 0 : metricsBase + n - 1);
  const dataDir = resolve(flags.dataDir ?? defaultUpDataDir());
  const externalRedis = process.env.SF_REDIS_URL;

  const wanted: Array<[number, string, string]> = [
    [controlPort, 'control API', '--control-port'],
    [routerAdminPort, 'router admin', '--router-admin-port'],
  ];
  if (!externalRedis) wanted.push([redisPort, 'state redis-server', '--redis-port']);
  if (metricsBase !== 0)
    for (let n = 1; n <= cellCount; n++)
      wanted.push([cellMetricsPort(n), `cell-${n} metrics`, '--cell-metrics-port-base']);
  for (const [port, what, flag] of wanted) {
    if (!(await portFree(port)))
      throw new Error(
        `port ${port} (${what}) is already taken — is another 'sf up' running? Choose another with ${flag}`,
      );
  }

  await mkdir(join(dataDir, 'logs'), { recursive: true });
  // Control speaks HTTPS by default, with a certificate from the platform CA (docs/tls.md).
  const controlHttps = flags.controlHttps !== false;
  const platformCa = await preparePlatformCa(dataDir, { ...flags, controlHttps }, (line) =>
    process.stderr.write(`${line}\n`),
  );
  const caPem = await readFile(platformCa.ca.certFile);
  // One token file per control address, so two platforms on one machine never share one.
  const listenUrl = controlUrlForListen('127.0.0.1', controlPort);
  const admin = await ensureAdminToken(process.env, listenUrl);
  const sfScript = process.argv[1];
  const env = { ...process.env, SF_API_TOKEN: admin.token };
  // Each component's pid, for operators and tests that kill one (docs/services.md).
  const supervisor = new Supervisor({ env, pidFile: join(dataDir, 'up-processes.json') });
  const cellNames = Array.from({ length: cellCount }, (_, i) => `cell-${i + 1}`);
  const start = (name: string, file: string, args: string[]): void =>
    supervisor.add({ name, file, args, log: join(dataDir, 'logs', `${name}.log`) });

  let shuttingDown = false;
  const shutdown = async (code: number, why: string): Promise<never> => {
    if (shuttingDown) return new Promise<never>(() => undefined);
    shuttingDown = true;
    const t0 = Date.now();
    // Said before and after, so a user who pressed Ctrl-C knows it was heard and when it is over.
    process.stdout.write(
      `sf up: stopping (${why}): control, then the cells and their instances, the router, the state store\n`,
    );
    // Control first, so it does not reschedule instances of cells that are merely shutting
    // down; then the cells (which stop their engines), the router, the state store last.
    await supervisor.stop([['control'], cellNames, ['router'], ['redis']], stopTimeoutMs);
    // The CLI no longer finds a control here (cli/local-control.ts).
    await removeLocalControl(process.env, listenUrl).catch(() => undefined);
    // A cell killed at the timeout leaves what it was still running or starting: stopped here.
    for (const p of await stopProcessesUnder(join(dataDir, 'cells'), stopTimeoutMs).catch(() => []))
      process.stdout.write(`sf up: stopped ${p.comm} (pid ${p.pid}) that its cell left running: ${p.args.join(' ')}\n`);
    process.stdout.write(
      `sf up: stopped after ${((Date.now() - t0) / 1000).toFixed(1)} s; services and their data are kept in ${dataDir} for the next sf up\n`,
    );
    process.exit(code);
  };
  process.once('SIGINT', () => void shutdown(0, 'SIGINT'));
  process.once('SIGTERM', () => void shutdown(0, 'SIGTERM'));

  try {
    let redisUrl = externalRedis;
    // With its own store, sf up locks it: each role gets a credentials file's path.
    let store: LockedStateStore | undefined;
    const credentials = (user: string): string[] => (store ? ['--redis-credentials', store.credentialsFile(user)] : []);
    if (!redisUrl) {
      const redisDir = join(dataDir, 'redis');
      await mkdir(redisDir, { recursive: true });
      store = await prepareLockedStateStore({
        dataDir,
        redisDir,
        port: redisPort,
        keyPrefix: process.env.SF_KEY_PREFIX ?? DEFAULT_KEY_PREFIX,
        cells: Array.from({ length: cellCount }, (_, i) => `cell-${i + 1}`),
      });
      start('redis', 'redis-server', store.serverArgs);
      redisUrl = `redis://127.0.0.1:${redisPort}`;
      await waitFor('redis-server', () => portAnswers(redisPort), 10_000, supervisor, ['redis']);
    }
    start('control', process.execPath, [
      sfScript,
      'control',
      '--listen',
      `127.0.0.1:${controlPort}`,
      '--data-dir',
      join(dataDir, 'control'),
      '--router-admin',
      `http://127.0.0.1:${routerAdminPort}`,
      '--redis',
      redisUrl,
      ...credentials('control'),
      // Services get TLS by default, with certificates from the platform CA (docs/tls.md).
      '--ca-dir',
      join(dataDir, 'ca'),
      ...(flags.caCert && flags.caKey ? ['--ca-cert', resolve(flags.caCert), '--ca-key', resolve(flags.caKey)] : []),
      ...(platformCa.control
        ? ['--tls-cert', platformCa.control.certFile, '--tls-key', platformCa.control.keyFile]
        : []),
    ]);
    const controlUrl = `${platformCa.control ? 'https' : 'http'}://127.0.0.1:${controlPort}`;
    await waitFor(
      'control',
      async () => (await fetchWithCa(`${controlUrl}/health`, {}, caPem)).ok,
      START_TIMEOUT_MS,
      supervisor,
      ['control'],
    );
    if (flags.routePorts) await setRoutePorts(controlUrl, admin.token, flags.routePorts, caPem);
    // The CLI on this machine finds this control, and the CA that verifies it, without settings.
    await writeLocalControl(process.env, listenUrl, {
      url: controlUrl,
      ca_file: caPemFile(dataDir),
      scrape_cert_file: platformCa.scrape.certFile,
      scrape_key_file: platformCa.scrape.keyFile,
    });
    start('router', process.execPath, [
      sfScript,
      'router',
      '--redis',
      redisUrl,
      ...credentials('router'),
      '--router-group',
      'default',
      '--admin',
      `127.0.0.1:${routerAdminPort}`,
      '--cache-file',
      join(dataDir, 'router-routes.json'),
    ]);
    for (let n = 1; n <= cellCount; n++) {
      const from = cellPortBase + 100 * (n - 1);
      start(`cell-${n}`, process.execPath, [
        sfScript,
        'cell',
        '--name',
        `cell-${n}`,
        '--zone',
        `z${n}`,
        '--capacity-mb',
        String(capacityMb),
        '--redis',
        redisUrl,
        ...credentials(cellAclUser(`cell-${n}`)),
        '--data-dir',
        join(dataDir, 'cells', `cell-${n}`),
        '--port-range',
        `${from}-${from + 99}`,
        '--metrics-listen',
        `127.0.0.1:${cellMetricsPort(n)}`,
        '--stop-instances-on-exit',
        // A 1 s beat, not the default half TTL: on one host the cells compete with the engines for
        // CPU, so a beat's margin before the 3 s TTL matters more here, and three cells cost the
        // store nothing.
        '--heartbeat-ms',
        String(UP_CELL_HEARTBEAT_MS),
        ...(flags.executor ? ['--executor', flags.executor] : []),
        // PostgreSQL instances serve TLS and replicate over it, verified against the platform CA.
        '--ca-dir',
        join(dataDir, 'ca'),
        ...(flags.caCert && flags.caKey ? ['--ca-cert', resolve(flags.caCert), '--ca-key', resolve(flags.caKey)] : []),
      ]);
    }
    await waitFor(
      'router',
      async () => (await fetch(`http://127.0.0.1:${routerAdminPort}/health`)).ok,
      START_TIMEOUT_MS,
      supervisor,
      ['router'],
    );
    let cellMetrics: string[] = [];
    await waitFor(
      `${cellCount} cells`,
      async () => {
        const res = await fetchWithCa(
          `${controlUrl}/v3/cells`,
          { headers: { authorization: `Bearer ${admin.token}` } },
          caPem,
        );
        const body = (await res.json()) as { resources: Array<{ alive: boolean; metrics_url: string | null }> };
        cellMetrics = body.resources.map((c) => c.metrics_url ?? '-');
        return body.resources.filter((c) => c.alive).length >= cellCount;
      },
      START_TIMEOUT_MS,
      supervisor,
      cellNames,
    );
    process.stdout.write(
      [
        `Service Foundry is up (data in ${dataDir}, logs in ${join(dataDir, 'logs')})`,
        `  state     ${redactRedisUrl(redisUrl)}${externalRedis ? ' (SF_REDIS_URL)' : ` (local redis-server, ACL users; operator login in ${store?.credentialsFile('admin')})`}`,
        `  control   ${controlUrl}  (admin token in ${admin.file ?? 'SF_API_TOKEN'})`,
        ...(platformCa.control
          ? [
              `            HTTPS with a certificate from the platform CA; sf on this machine verifies it with ${caPemFile(dataDir)}`,
              `            curl --cacert ${caPemFile(dataDir)} -H "authorization: Bearer ${admin.file ? `$(cat ${admin.file})` : '$SF_API_TOKEN'}" ${controlUrl}/v3/cells`,
            ]
          : ['            plain HTTP (--no-control-https)']),
        ...(controlPort !== DEFAULT_UP_OPTIONS.controlPort
          ? [`            not the default port: export SF_CONTROL_URL=${controlUrl}`]
          : []),
        `  router    admin http://127.0.0.1:${routerAdminPort} (/routes and /metrics with the admin token), group default, route ports ${flags.routePorts ?? '16000-16999'}`,
        `  tls       platform CA ${join(dataDir, 'ca.pem')} (sf ca --pem); router certificate ${platformCa.router.certFile}`,
        '            services require TLS unless created with --tls optional|off',
        `  cells     ${Array.from({ length: cellCount }, (_, i) => `cell-${i + 1} (z${i + 1})`).join(', ')}`,
        `  metrics   control ${controlUrl}/metrics (with the admin token or a read token)`,
        `            router  http://127.0.0.1:${routerAdminPort}/metrics (with the admin token)`,
        `            cells   ${cellMetrics.join(' ')}`,
        '            a Prometheus scrape configuration for all of them: sf prometheus-config',
        '',
        'Try next:',
        '  sf create-service redis cache --replicas 1 --wait',
        '  sf create-service-key cache app',
        '  redis-cli -u "$(sf service-key cache app --json | jq -r .uri)" --cacert "$(sf ca --path)" ping',
        '  sf create-service postgres db --replicas 1 --wait',
        '  sf create-service-key db app',
        '  psql "$(sf service-key db app --json | jq -r .uri)" -c \'select 1\'',
        '  sf cells',
        '',
        'A component that exits is restarted; Ctrl-C stops everything.',
        '',
      ].join('\n'),
    );
  } catch (err) {
    process.stderr.write(`sf up: ${(err as Error).message}\n`);
    await shutdown(1, 'start-up failed');
  }
}

/** Points the default router group at other ports (tests, or a machine where 16000+ is taken). */
async function setRoutePorts(controlUrl: string, token: string, ranges: string, ca: Buffer): Promise<void> {
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const groups = (await (
    await fetchWithCa(`${controlUrl}/routing/v1/router_groups?name=default`, { headers }, ca)
  ).json()) as Array<{ guid: string }>;
  const guid = groups[0]?.guid;
  if (!guid) throw new Error('control has no default router group');
  const res = await fetchWithCa(
    `${controlUrl}/routing/v1/router_groups/${guid}`,
    { method: 'PUT', headers, body: JSON.stringify({ reservable_ports: ranges }) },
    ca,
  );
  if (!res.ok) throw new Error(`--route-ports ${ranges}: ${await res.text()}`);
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((r) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      r(true);
    });
    s.once('error', () => r(false));
  });
}

export function registerUpCommand(program: Command): void {
  program
    .command('up')
    .description('run everything on this machine: state redis, control, a router and cells (stops on Ctrl-C)')
    .option(
      '--data-dir <dir>',
      'where state, cell volumes and logs live (default: /var/lib/service-foundry/up as root, else ${SF_HOME:-~/.sf}/up)',
    )
    .option('--cells <n>', 'how many cells to start', String(DEFAULT_UP_OPTIONS.cells))
    .option('--control-port <port>', 'control API port', String(DEFAULT_UP_OPTIONS.controlPort))
    .option('--router-admin-port <port>', 'router admin port', String(DEFAULT_UP_OPTIONS.routerAdminPort))
    .option(
      '--redis-port <port>',
      'port of the local state redis-server (unless SF_REDIS_URL is set)',
      String(DEFAULT_UP_OPTIONS.redisPort),
    )
    .option(
      '--cell-port-base <port>',
      'first instance port; each cell gets 100',
      String(DEFAULT_UP_OPTIONS.cellPortBase),
    )
    .option('--capacity-mb <n>', 'volume capacity per cell, in MB', String(DEFAULT_UP_OPTIONS.capacityMb))
    .option('--route-ports <ranges>', "the default router group's ports, e.g. 16000-16999 (kept in state)")
    .option(
      '--cell-metrics-port-base <port>',
      'cell N serves Prometheus /metrics on this port + N-1 (0: each cell picks a free port)',
      String(DEFAULT_UP_OPTIONS.cellMetricsPortBase),
    )
    .option('--ca-cert <file>', "the operator's CA certificate (PEM) instead of one made in DATA/ca")
    .option('--ca-key <file>', "the operator's CA private key (PEM, mode 0600), with --ca-cert")
    .option(
      '--control-https',
      'serve the control API over HTTPS with a certificate from the platform CA (the default; sf on this machine verifies it with DATA/ca.pem)',
    )
    .option(
      '--no-control-https',
      'serve the control API over plain HTTP on loopback instead (a browser without the platform CA, old tools)',
    )
    .option(
      '--stop-timeout <seconds>',
      'on Ctrl-C, how long each component may take to stop before SIGKILL',
      String(DEFAULT_UP_OPTIONS.stopTimeoutS),
    )
    .addOption(
      new Option('--executor <kind>', 'how cells run instances by default (docker: see sf images build)').choices([
        'process',
        'docker',
      ]),
    )
    .action((flags: UpFlags) =>
      runUp(flags).catch((err: unknown) => {
        if (err instanceof UsageError) exitWithError(err);
        process.stderr.write(`sf up: ${(err as Error).message}\n`);
        process.exit(1);
      }),
    );
}
