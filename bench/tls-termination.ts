/**
 * Question: what does TLS termination in the router cost, next to HAProxy 2.6 terminating TLS on
 * the same backends in the same run, and next to the router's own plaintext path?
 *
 * - new TLS connections per second: a full handshake per connection, closed at once, from
 *   bench/native/tls-handshake-client.c (one SSL_CTX for all its connections; `--conn-client
 *   s_time` for `openssl s_time -new`, which spends four times the proxy's CPU per handshake),
 *   several in parallel, against the router's terminating route and HAProxy's `bind ... ssl`;
 * - new TLS connections per second with a GET on each (redis-benchmark `-k 0`, 50 clients): the
 *   handshake, a request and its reply, then close;
 * - bulk throughput: one TLS connection carrying a stream to a discarding backend;
 * - redis-benchmark GET over TLS (router, HAProxy) and over plaintext (router, direct);
 * - redis-benchmark GET and SET through the router with TLS all the way (the client's TLS
 *   terminated, re-encrypted to the engine's TLS port and verified against the platform CA, as a
 *   service with TLS runs), next to client TLS only and to plaintext.
 *
 * Router and HAProxy get the same number of threads (`--threads 1,2`: one run per count, the
 * router with `--threads N`, HAProxy `nbthread N`); with the native relay the router terminates
 * TLS on its relay threads (OpenSSL in the addon), otherwise on its JS thread. The certificate is a
 * P-256 one from the platform CA (common/platform-ca.ts). Samples alternate between targets and
 * the order rotates each round; read medians and ratios. The load average (`uptime`) is printed
 * before and after each thread count.
 *
 *   node dist/bench/tls-termination.js [--quick] [--rounds N] [--threads 1,2] [--redis-only] [--engine]
 *                                      [--reencrypt] [--conn-only] [--conn-parallel N] [--haproxy-suites router]
 *
 * The router prefers TLS_AES_128_GCM_SHA256 (router/tls-suites.ts); HAProxy runs with OpenSSL's
 * default order (TLS_AES_256_GCM_SHA384 first) unless `--haproxy-suites router` gives it the
 * router's, which isolates the proxies from the choice of suite.
 *
 * `--conn-only` runs just the new-connection rows, with `--conn-parallel N` `openssl s_time`
 * clients at once (4 unless given): with one, the rate is the inverse of a handshake's latency
 * through each proxy; with more clients than cores, of the CPU they all spend.
 *
 * `--redis-only` runs just the redis-benchmark rows through the router (plaintext, client TLS,
 * client + engine TLS); `--engine` adds the client + engine TLS and SET rows to a full run.
 *
 * `--reencrypt` asks instead: terminating and re-encrypting to a TLS backend (the router's route
 * with `backendCaFile`, HAProxy's `server ... ssl verify required ca-file CA`), same certificate
 * and CA on both: new connections per second (redis-benchmark GET with a new TLS connection per
 * request, `-k 0`, so each one costs the client's handshake and a backend handshake, resumed or
 * not as each proxy does by default), CPU per such connection, bulk MB/s to a TLS sink
 * (bench/native/tls-sink-server.c) and GET ops/s to redis-server's TLS port.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { PlatformCa } from '../common/platform-ca';
import { haproxyVersion } from './lib/haproxy';
import {
  freePort,
  makeTempDir,
  runToCompletion,
  sleep,
  startProcess,
  stopAll,
  waitForHttp,
  waitForPort,
  type ManagedProcess,
} from './lib/processes';
import { startRedis } from './lib/backends';
import { runRedisBenchmark } from './lib/redis-bench';
import { formatNumber, formatRatio, formatTable, median, writeResults } from './lib/report';
import { acquireRunLock } from './lib/run-lock';
import { sfCliPath } from './lib/router-process';
import { buildNativeTool } from './lib/native-tool';
import { TLS13_CIPHERSUITES } from '../router/tls-suites';

const OPENSSL = ['-lssl', '-lcrypto'];

/** A table row of the router against HAProxy: the medians `m` gives for `KEY_router` and `KEY_haproxy`, and their ratio. */
function versusRow(m: (key: string) => number, label: string, key: string): string[] {
  return [
    label,
    formatNumber(m(`${key}_router`)),
    formatNumber(m(`${key}_haproxy`)),
    formatRatio(m(`${key}_router`) / m(`${key}_haproxy`)),
  ];
}

interface Settings {
  rounds: number;
  connSeconds: number;
  connParallel: number;
  bulkMb: number;
  redisRequests: number;
  redisOnly: boolean;
  /** `--conn-only`: just the new-connection rows (`--conn-parallel N` clients, 4 unless given). */
  connOnly: boolean;
  /**
   * `--conn-client s_time`: the new-connection rows with `openssl s_time -new` (earlier rounds'
   * client) instead of bench/native/tls-handshake-client.c.
   */
  connClient: 'native' | 's_time';
  /**
   * `--haproxy-suites router`: HAProxy is given the router's TLS 1.3 suite order (its
   * `ssl-default-bind-ciphersuites` and `ssl-default-server-ciphersuites`) instead of OpenSSL's
   * default, so that both proxies negotiate the same suite and only the proxies differ.
   */
  haproxySameSuites: boolean;
  engine: boolean;
  reencrypt: boolean;
  reconnRequests: number;
  threads: number[];
}

function parseArgs(argv: string[]): Settings {
  const quick = argv.includes('--quick');
  const i = argv.indexOf('--rounds');
  const rounds = i >= 0 ? Number(argv[i + 1]) : quick ? 1 : 3;
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds must be a positive integer');
  return {
    rounds,
    connSeconds: quick ? 3 : 5,
    connParallel: positiveInt(argv, '--conn-parallel', 4),
    bulkMb: quick ? 128 : 512,
    redisRequests: quick ? 50_000 : 200_000,
    redisOnly: argv.includes('--redis-only'),
    connOnly: argv.includes('--conn-only'),
    connClient:
      argv.includes('--conn-client') && argv[argv.indexOf('--conn-client') + 1] === 's_time' ? 's_time' : 'native',
    haproxySameSuites: argv.includes('--haproxy-suites') && argv[argv.indexOf('--haproxy-suites') + 1] === 'router',
    engine: argv.includes('--engine'),
    reencrypt: argv.includes('--reencrypt'),
    reconnRequests: quick ? 5_000 : 20_000,
    threads: parseThreads(argv),
  };
}

/** HAProxy's global lines for `--haproxy-suites router`. */
function haproxySuites(settings: Settings): string[] {
  if (!settings.haproxySameSuites) return [];
  const suites = TLS13_CIPHERSUITES.join(':');
  return [`  ssl-default-bind-ciphersuites ${suites}`, `  ssl-default-server-ciphersuites ${suites}`];
}

function positiveInt(argv: string[], name: string, fallback: number): number {
  const i = argv.indexOf(name);
  if (i < 0) return fallback;
  const n = Number(argv[i + 1]);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new Error(`${name} must be an integer 1-256`);
  return n;
}

function parseThreads(argv: string[]): number[] {
  const i = argv.indexOf('--threads');
  if (i < 0) return [1];
  const list = String(argv[i + 1] ?? '')
    .split(',')
    .map(Number);
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n < 1 || n > 64))
    throw new Error('--threads must be a comma-separated list of integers 1-64');
  return list;
}

/** A backend that reads and discards everything, then closes: the far end of the bulk stream. */
const SINK = `
const net = require('node:net');
net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.on('data', () => {}); s.on('end', () => s.end()); })
  .listen(Number(process.argv[1]), '127.0.0.1');
`;

/** CPU time (user + system) a process used so far, in ms, from /proc (Linux). */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command name; in clock
  // ticks, 100 per second on Linux.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/**
 * Full handshakes per second: `parallel` clients, summed; the handshakes made; and the clients' CPU
 * per handshake when the client reports it. The client is bench/native/tls-handshake-client.c
 * when it was built (`handshakeClient`), else `openssl s_time -new`.
 */
async function connRate(
  port: number,
  caFile: string,
  seconds: number,
  parallel: number,
  handshakeClient: string | undefined,
): Promise<{ rate: number; count: number; clientCpuUs?: number }> {
  if (handshakeClient) {
    const runs = await Promise.all(
      Array.from({ length: parallel }, (_, k) =>
        runToCompletion(`handshakes-${k}`, handshakeClient, [String(port), caFile, 'localhost', String(seconds)], {
          timeoutMs: (seconds + 30) * 1000,
        }),
      ),
    );
    let rate = 0;
    let count = 0;
    let cpu = 0;
    for (const r of runs) {
      const [made, took, used] = r.stdout.trim().split(' ').map(Number);
      if (r.code !== 0 || !Number.isFinite(made) || !took || !Number.isFinite(used))
        throw new Error(`handshake client failed: ${r.stdout.slice(0, 200)}${r.stderr.slice(0, 500)}`);
      rate += made! / took;
      count += made!;
      cpu += used!;
    }
    return { rate, count, clientCpuUs: (cpu * 1e6) / Math.max(1, count) };
  }
  const runs = await Promise.all(
    Array.from({ length: parallel }, (_, k) =>
      runToCompletion(
        `s_time-${k}`,
        'openssl',
        ['s_time', '-connect', `127.0.0.1:${port}`, '-new', '-time', String(seconds), '-CAfile', caFile],
        { timeoutMs: (seconds + 30) * 1000 },
      ),
    ),
  );
  let total = 0;
  let count = 0;
  for (const r of runs) {
    // "1234 connections in 5.01s; 246.31 connections/user sec, ..." then "1234 connections in 6 real seconds".
    const m = /(\d+) connections in (\d+) real seconds/.exec(r.stdout);
    if (!m) throw new Error(`openssl s_time printed no result: ${r.stdout.slice(0, 500)}${r.stderr.slice(0, 500)}`);
    total += Number(m[1]) / Math.max(1, Number(m[2]));
    count += Number(m[1]);
  }
  return { rate: total, count };
}

/**
 * GETs per second with a new TLS connection for each (redis-benchmark `-k 0`, 50 clients), and
 * the CPU the proxy `pid` spent per connection, in µs.
 */
async function getOnNewConnections(
  port: number,
  caFile: string,
  requests: number,
  pid: number,
): Promise<{ rps: number; cpuUs: number }> {
  const before = cpuMs(pid);
  const rows = await runRedisBenchmark({
    host: '127.0.0.1',
    port,
    clients: 50,
    requests,
    pipeline: 1,
    tests: ['get'],
    keepAlive: false,
    tls: { caFile, sni: 'localhost' },
  });
  return { rps: rows[0]!.rps, cpuUs: ((cpuMs(pid) - before) * 1000) / requests };
}

/**
 * Builds bench/native/tls-handshake-client.c into `dir`; undefined (and `openssl s_time` used)
 * without a compiler and libssl-dev, or with `--conn-client s_time`.
 */
async function buildHandshakeClient(dir: string, settings: Settings): Promise<string | undefined> {
  if (settings.connClient === 's_time') return undefined;
  const built = await buildNativeTool('tls-handshake-client', dir, OPENSSL);
  if (built.ok) return built.path;
  process.stderr.write(`handshake client not built (${built.reason}); using openssl s_time\n`);
  return undefined;
}

/**
 * Builds bench/native/tls-bulk-client.c (the system's OpenSSL, AES-NI) into `dir`; undefined when
 * there is no compiler or no libssl-dev, and the bulk rows then use Node's TLS client, which on
 * this machine's Node encrypts at ~0.4-0.6 GB/s and limits both targets alike.
 */
async function buildBulkClient(dir: string): Promise<string | undefined> {
  const built = await buildNativeTool('tls-bulk-client', dir, OPENSSL);
  if (built.ok) return built.path;
  process.stderr.write(`bulk client not built (${built.reason}); using Node's TLS client\n`);
  return undefined;
}

/** Builds bench/native/tls-sink-server.c into `dir` (the TLS backend of the re-encrypting bulk rows). */
async function buildSinkServer(dir: string): Promise<string> {
  const built = await buildNativeTool('tls-sink-server', dir, OPENSSL);
  if (!built.ok) throw new Error(`--reencrypt needs cc and libssl-dev: ${built.reason}`);
  return built.path;
}

/** MB/s of `streams` TLS streams of `mb` megabytes each through `port`, summed, with the C client. */
async function bulkNative(client: string, port: number, caFile: string, mb: number, streams: number): Promise<number> {
  const runs = await Promise.all(
    Array.from({ length: streams }, (_, k) =>
      runToCompletion(`bulk-${k}`, client, [String(port), caFile, 'localhost', String(mb)], { timeoutMs: 300_000 }),
    ),
  );
  let total = 0;
  for (const r of runs) {
    const v = Number(r.stdout.trim());
    if (r.code !== 0 || !Number.isFinite(v)) throw new Error(`bulk client failed: ${r.stderr.slice(0, 500)}`);
    total += v;
  }
  return total;
}

/** MB/s of one TLS stream of `mb` megabytes through `port` to the discarding backend. */
function bulk(port: number, ca: Buffer, mb: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    let left = mb * 4;
    const started = process.hrtime.bigint();
    const s = tlsConnect({ port, host: '127.0.0.1', servername: 'localhost', ca }, () => {
      const pump = (): void => {
        while (left > 0) {
          left--;
          if (!s.write(chunk)) {
            s.once('drain', pump);
            return;
          }
        }
        s.end();
      };
      pump();
    });
    s.on('data', () => undefined);
    s.on('error', reject);
    s.on('close', () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      resolve(mb / seconds);
    });
  });
}

async function loadAverage(): Promise<string> {
  const r = await runToCompletion('uptime', 'uptime', []);
  return /load average: (.*)$/m.exec(r.stdout)?.[1]?.trim() ?? r.stdout.trim();
}

/**
 * The engine the columns share: the benches' redis-server (bench/lib/backends.ts), with TLS on
 * `tlsPort` and the engine's certificate (clients not asked for one), plaintext on `plainPort`
 * (0: none); resolves once both listen.
 */
async function startTlsRedis(
  tlsPort: number,
  plainPort: number,
  cert: { certFile: string; keyFile: string },
  caFile: string,
): Promise<ManagedProcess> {
  const redis = await startRedis(plainPort, {
    args: [
      '--tls-port',
      String(tlsPort),
      '--tls-cert-file',
      cert.certFile,
      '--tls-key-file',
      cert.keyFile,
      '--tls-ca-cert-file',
      caFile,
      '--tls-auth-clients',
      'no',
    ],
  });
  await waitForPort(tlsPort, redis);
  return redis;
}

async function main(): Promise<void> {
  const settings = parseArgs(process.argv.slice(2));
  await acquireRunLock('tls-termination');
  const reports: string[] = [];
  const allSamples: Record<string, Record<string, number[]>> = {};
  let relay = '';
  for (const threads of settings.threads) {
    const before = await loadAverage();
    const started = new Date().toISOString();
    const run = settings.reencrypt ? await runReencrypt(settings, threads) : await runFor(settings, threads);
    const after = await loadAverage();
    relay = run.relay;
    allSamples[`threads_${threads}`] = run.samples;
    reports.push(
      `## ${threads} thread(s): router --threads ${threads}, HAProxy nbthread ${threads}\n` +
        `started ${started}; load average before: ${before}; after: ${after}\n` +
        `TLS ports in /health: ${run.tlsPorts}\n\n${run.report}`,
    );
    process.stdout.write(`${reports.at(-1)!}\n\n`);
  }
  const file = writeResults('tls-termination', { settings, relay, samples: allSamples });
  process.stdout.write(`raw samples: ${file}\n`);
}

async function runFor(
  settings: Settings,
  threads: number,
): Promise<{ relay: string; tlsPorts: string; samples: Record<string, number[]>; report: string }> {
  const dir = makeTempDir('sf-bench-tls-');
  const ca = await PlatformCa.open(join(dir, 'ca'));
  const cert = await ca.ensure('bench', ['localhost', '127.0.0.1']);
  const caPem = readFileSync(ca.certFile);
  const bulkClient = await buildBulkClient(dir);
  const handshakeClient = await buildHandshakeClient(dir, settings);
  // One stream per thread, so that every thread of both has one to carry.
  const runBulk = (port: number): Promise<number> =>
    bulkClient
      ? bulkNative(bulkClient, port, ca.certFile, settings.bulkMb, threads)
      : bulk(port, caPem, settings.bulkMb);
  const haproxyPem = join(dir, 'haproxy.pem');
  writeFileSync(haproxyPem, readFileSync(cert.certFile, 'utf8') + readFileSync(cert.keyFile, 'utf8'), { mode: 0o600 });

  const redisPort = await freePort();
  const redisTlsPort = await freePort();
  const sinkPort = await freePort();
  const engineCert = await ca.ensure('bench-engine', ['localhost', '127.0.0.1']);
  const redis = await startTlsRedis(redisTlsPort, redisPort, engineCert, ca.certFile);
  const sink = startProcess('sink', process.execPath, ['-e', SINK, String(sinkPort)]);
  await waitForPort(sinkPort, sink);

  const ports = {
    routerTlsRedis: await freePort(),
    routerPlainRedis: await freePort(),
    routerTlsSink: await freePort(),
    routerTlsEngineRedis: await freePort(),
    haproxyTlsRedis: await freePort(),
    haproxyTlsSink: await freePort(),
  };
  const tls = { certFile: cert.certFile, keyFile: cert.keyFile };
  const routes = {
    routes: [
      { port: ports.routerTlsRedis, backends: [{ host: '127.0.0.1', port: redisPort }], tls },
      { port: ports.routerPlainRedis, backends: [{ host: '127.0.0.1', port: redisPort }] },
      { port: ports.routerTlsSink, backends: [{ host: '127.0.0.1', port: sinkPort }], tls },
      {
        port: ports.routerTlsEngineRedis,
        backends: [{ host: '127.0.0.1', port: redisTlsPort, tls: true }],
        tls: { ...tls, backendCaFile: ca.certFile },
      },
    ],
  };
  const routeFile = join(dir, 'routes.json');
  writeFileSync(routeFile, JSON.stringify(routes));
  const adminPort = await freePort();
  const router = startProcess(
    'router',
    process.execPath,
    [sfCliPath(), 'router', '--routes', routeFile, '--admin', `127.0.0.1:${adminPort}`, '--threads', String(threads)],
    {
      fileLimit: 65536,
    },
  );
  const health = JSON.parse(await waitForHttp(`http://127.0.0.1:${adminPort}/health`, router)) as {
    relay: string;
    tlsPorts?: Array<{ port: number; relay: string }>;
  };
  const cfg = [
    'global',
    `  nbthread ${threads}`,
    '  maxconn 4000',
    ...haproxySuites(settings),
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    'frontend fe_redis',
    `  bind 127.0.0.1:${ports.haproxyTlsRedis} ssl crt ${haproxyPem}`,
    `  default_backend be_redis`,
    'backend be_redis',
    `  server s1 127.0.0.1:${redisPort}`,
    'frontend fe_sink',
    `  bind 127.0.0.1:${ports.haproxyTlsSink} ssl crt ${haproxyPem}`,
    `  default_backend be_sink`,
    'backend be_sink',
    `  server s1 127.0.0.1:${sinkPort}`,
    '',
  ].join('\n');
  writeFileSync(join(dir, 'haproxy.cfg'), cfg);
  const haproxy = startProcess('haproxy', 'haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { fileLimit: 65536 });
  for (const p of Object.values(ports))
    await waitForPort(p, p === ports.haproxyTlsRedis || p === ports.haproxyTlsSink ? haproxy : router);
  await sleep(500);

  const samples: Record<string, number[]> = {};
  const add = (key: string, v: number): void => {
    (samples[key] ??= []).push(v);
  };
  const redisRun = async (port: number, useTls: boolean, test: 'get' | 'set'): Promise<number> => {
    const rows = await runRedisBenchmark({
      host: '127.0.0.1',
      port,
      clients: 50,
      requests: settings.redisRequests,
      pipeline: 1,
      tests: [test],
      ...(useTls ? { tls: { caFile: ca.certFile, sni: 'localhost' } } : {}),
    });
    return rows[0]!.rps;
  };
  const redisGet = (port: number, useTls: boolean): Promise<number> => redisRun(port, useTls, 'get');
  // The CPU the proxy itself spent per connection and per GB: on a machine shared with other work,
  // throughput swings with the neighbours' load, CPU per unit of work much less.
  const connWithCpu = async (who: string, pid: number, port: number): Promise<number> => {
    const before = cpuMs(pid);
    const r = await connRate(port, ca.certFile, settings.connSeconds, settings.connParallel, handshakeClient);
    add(`cpu_us_per_conn_${who}`, ((cpuMs(pid) - before) * 1000) / Math.max(1, r.count));
    if (r.clientCpuUs !== undefined) add(`client_cpu_us_per_conn_${who}`, r.clientCpuUs);
    return r.rate;
  };
  // A client that talks: redis-benchmark with a new TLS connection per GET (`-k 0`), so that each
  // connection carries a request and its reply (and the session tickets a server sends with them).
  const getPerConnection = async (who: string, pid: number, port: number): Promise<number> => {
    const r = await getOnNewConnections(port, ca.certFile, settings.reconnRequests, pid);
    add(`cpu_us_per_getconn_${who}`, r.cpuUs);
    return r.rps;
  };
  const bulkWithCpu = async (who: string, pid: number, port: number): Promise<number> => {
    const before = cpuMs(pid);
    const rate = await runBulk(port);
    const gb = (settings.bulkMb * (bulkClient ? threads : 1)) / 1024;
    add(`cpu_ms_per_gb_${who}`, (cpuMs(pid) - before) / gb);
    return rate;
  };
  const allSteps: Array<[string, () => Promise<number>]> = [
    ['conn_router', () => connWithCpu('router', router.pid, ports.routerTlsRedis)],
    ['conn_haproxy', () => connWithCpu('haproxy', haproxy.pid, ports.haproxyTlsRedis)],
    ['getconn_router', () => getPerConnection('router', router.pid, ports.routerTlsRedis)],
    ['getconn_haproxy', () => getPerConnection('haproxy', haproxy.pid, ports.haproxyTlsRedis)],
    ['bulk_router', () => bulkWithCpu('router', router.pid, ports.routerTlsSink)],
    ['bulk_haproxy', () => bulkWithCpu('haproxy', haproxy.pid, ports.haproxyTlsSink)],
    ['get_router_tls', () => redisGet(ports.routerTlsRedis, true)],
    ['get_haproxy_tls', () => redisGet(ports.haproxyTlsRedis, true)],
    ['get_router_plain', () => redisGet(ports.routerPlainRedis, false)],
    ['get_direct_plain', () => redisGet(redisPort, false)],
    ['get_router_tls_engine', () => redisGet(ports.routerTlsEngineRedis, true)],
    ['set_router_plain', () => redisRun(ports.routerPlainRedis, false, 'set')],
    ['set_router_tls', () => redisRun(ports.routerTlsRedis, true, 'set')],
    ['set_router_tls_engine', () => redisRun(ports.routerTlsEngineRedis, true, 'set')],
  ];
  const steps = settings.redisOnly
    ? allSteps.filter(([key]) => /^(get|set)_router_/.test(key))
    : settings.connOnly
      ? allSteps.filter(([key]) => key.startsWith('conn_') || key.startsWith('getconn_'))
      : settings.engine
        ? allSteps
        : allSteps.filter(([key]) => !/^set_|_engine$/.test(key));
  for (let round = 0; round < settings.rounds; round++) {
    const order = [...steps.slice(round % steps.length), ...steps.slice(0, round % steps.length)];
    for (const [key, fn] of order) {
      add(key, await fn());
      process.stderr.write(`threads ${threads} round ${round + 1} ${key}: ${formatNumber(samples[key]!.at(-1))}\n`);
    }
  }
  const m = (k: string): number => median(samples[k] ?? []);
  const table = formatTable(
    ['measure', 'router', 'HAProxy 2.6', 'router / HAProxy'],
    [
      versusRow(m, 'new TLS conn/s', 'conn'),
      versusRow(m, 'new TLS conn/s, a GET on each (-k 0)', 'getconn'),
      versusRow(m, 'CPU µs per such connection (lower is better)', 'cpu_us_per_getconn'),
      versusRow(m, 'bulk TLS MB/s', 'bulk'),
      [
        'GET ops/s over TLS (-c 50 -P 1)',
        formatNumber(m('get_router_tls')),
        formatNumber(m('get_haproxy_tls')),
        formatRatio(m('get_router_tls') / m('get_haproxy_tls')),
      ],
      versusRow(m, 'CPU µs per new TLS connection (lower is better)', 'cpu_us_per_conn'),
      ...(samples.client_cpu_us_per_conn_router
        ? [versusRow(m, "clients' CPU µs per handshake", 'client_cpu_us_per_conn')]
        : []),
      versusRow(m, 'CPU ms per GB of bulk TLS (lower is better)', 'cpu_ms_per_gb'),
    ],
  );
  const cost = formatTable(
    ['GET ops/s (-c 50 -P 1)', 'value', 'ratio to router plaintext'],
    [
      ['router, plaintext', formatNumber(m('get_router_plain')), '1.00'],
      [
        'router, TLS terminated',
        formatNumber(m('get_router_tls')),
        formatRatio(m('get_router_tls') / m('get_router_plain')),
      ],
      [
        'direct, plaintext',
        formatNumber(m('get_direct_plain')),
        formatRatio(m('get_direct_plain') / m('get_router_plain')),
      ],
    ],
  );
  const allTheWay = formatTable(
    ['through the router (-c 50 -P 1)', 'GET ops/s', 'ratio', 'SET ops/s', 'ratio'],
    (
      [
        ['plaintext', 'router_plain'],
        ['client TLS, plaintext to the engine', 'router_tls'],
        ['client TLS + engine TLS (verified)', 'router_tls_engine'],
      ] as const
    ).map(([label, key]) => [
      label,
      formatNumber(m(`get_${key}`)),
      formatRatio(m(`get_${key}`) / m('get_router_plain')),
      formatNumber(m(`set_${key}`)),
      formatRatio(m(`set_${key}`) / m('set_router_plain')),
    ]),
  );
  const bulkBy = bulkClient
    ? `bulk: ${threads} stream(s) of ${settings.bulkMb} MB each from bench/native/tls-bulk-client.c`
    : `bulk: one stream of ${settings.bulkMb} MB from Node's TLS client`;
  const header = `router relay: ${health.relay}; ${await haproxyVersion()} (TLS 1.3 suites: ${settings.haproxySameSuites ? "the router's order" : "OpenSSL's default order"}); rounds ${settings.rounds}; ${bulkBy}; handshakes: ${settings.connParallel} x ${handshakeClient ? 'bench/native/tls-handshake-client.c' : 'openssl s_time -new'}`;
  const raw = Object.entries(samples)
    .map(([k, v]) => `${k}: ${v.map((x) => formatNumber(x)).join(' / ')}`)
    .join('\n');
  const withEngine = settings.engine || settings.redisOnly ? `\n\n${allTheWay}` : '';
  await haproxy.stop();
  await router.stop();
  await sink.stop();
  await redis.stop();
  return {
    relay: health.relay,
    tlsPorts: JSON.stringify(health.tlsPorts ?? []),
    samples,
    report: `${header}\n\n${table}\n\n${cost}${withEngine}\n\nsamples:\n${raw}`,
  };
}

/**
 * Terminating and re-encrypting to TLS backends: the router (relay threads with the addon) against
 * HAProxy with `ssl verify required ca-file` on its server lines.
 */
async function runReencrypt(
  settings: Settings,
  threads: number,
): Promise<{ relay: string; tlsPorts: string; samples: Record<string, number[]>; report: string }> {
  const dir = makeTempDir('sf-bench-tls-re-');
  const ca = await PlatformCa.open(join(dir, 'ca'));
  const cert = await ca.ensure('bench', ['localhost', '127.0.0.1']);
  const engineCert = await ca.ensure('bench-engine', ['localhost', '127.0.0.1']);
  const bulkClient = await buildBulkClient(dir);
  const sinkServer = await buildSinkServer(dir);
  const haproxyPem = join(dir, 'haproxy.pem');
  writeFileSync(haproxyPem, readFileSync(cert.certFile, 'utf8') + readFileSync(cert.keyFile, 'utf8'), { mode: 0o600 });
  const redisTlsPort = await freePort();
  const sinkPort = await freePort();
  const redis = await startTlsRedis(redisTlsPort, 0, engineCert, ca.certFile);
  const sink = startProcess('tls-sink', sinkServer, [String(sinkPort), engineCert.certFile, engineCert.keyFile]);
  await waitForPort(sinkPort, sink);
  const ports = {
    routerRedis: await freePort(),
    routerSink: await freePort(),
    haproxyRedis: await freePort(),
    haproxySink: await freePort(),
  };
  const tls = { certFile: cert.certFile, keyFile: cert.keyFile, backendCaFile: ca.certFile };
  const routeFile = join(dir, 'routes.json');
  writeFileSync(
    routeFile,
    JSON.stringify({
      routes: [
        { port: ports.routerRedis, backends: [{ host: '127.0.0.1', port: redisTlsPort, tls: true }], tls },
        { port: ports.routerSink, backends: [{ host: '127.0.0.1', port: sinkPort, tls: true }], tls },
      ],
    }),
  );
  const adminPort = await freePort();
  const router = startProcess(
    'router',
    process.execPath,
    [sfCliPath(), 'router', '--routes', routeFile, '--admin', `127.0.0.1:${adminPort}`, '--threads', String(threads)],
    { fileLimit: 65536 },
  );
  const health = JSON.parse(await waitForHttp(`http://127.0.0.1:${adminPort}/health`, router)) as {
    relay: string;
    tlsPorts?: Array<{ port: number; relay: string }>;
  };
  // The router verifies the backend's IP address (no backendServerName); HAProxy its name.
  const server = (p: number): string =>
    `  server s1 127.0.0.1:${p} ssl verify required ca-file ${ca.certFile} verifyhost localhost`;
  const cfg = [
    'global',
    `  nbthread ${threads}`,
    '  maxconn 4000',
    ...haproxySuites(settings),
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    'frontend fe_redis',
    `  bind 127.0.0.1:${ports.haproxyRedis} ssl crt ${haproxyPem}`,
    '  default_backend be_redis',
    'backend be_redis',
    server(redisTlsPort),
    'frontend fe_sink',
    `  bind 127.0.0.1:${ports.haproxySink} ssl crt ${haproxyPem}`,
    '  default_backend be_sink',
    'backend be_sink',
    server(sinkPort),
    '',
  ].join('\n');
  writeFileSync(join(dir, 'haproxy.cfg'), cfg);
  const haproxy = startProcess('haproxy', 'haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { fileLimit: 65536 });
  for (const [name, p] of Object.entries(ports)) await waitForPort(p, name.startsWith('haproxy') ? haproxy : router);
  await sleep(500);

  const samples: Record<string, number[]> = {};
  const add = (key: string, v: number): void => {
    (samples[key] ??= []).push(v);
  };
  const tlsOptions = { caFile: ca.certFile, sni: 'localhost' };
  const reconnect = async (who: string, pid: number, port: number): Promise<number> => {
    const r = await getOnNewConnections(port, ca.certFile, settings.reconnRequests, pid);
    add(`cpu_us_per_conn_${who}`, r.cpuUs);
    return r.rps;
  };
  const bulkWithCpu = async (who: string, pid: number, port: number): Promise<number> => {
    const before = cpuMs(pid);
    const rate = bulkClient
      ? await bulkNative(bulkClient, port, ca.certFile, settings.bulkMb, threads)
      : await bulk(port, readFileSync(ca.certFile), settings.bulkMb);
    add(`cpu_ms_per_gb_${who}`, (cpuMs(pid) - before) / ((settings.bulkMb * (bulkClient ? threads : 1)) / 1024));
    return rate;
  };
  const get = async (port: number): Promise<number> =>
    (
      await runRedisBenchmark({
        host: '127.0.0.1',
        port,
        clients: 50,
        requests: settings.redisRequests,
        pipeline: 1,
        tests: ['get'],
        tls: tlsOptions,
      })
    )[0]!.rps;
  const steps: Array<[string, () => Promise<number>]> = [
    ['conn_router', () => reconnect('router', router.pid, ports.routerRedis)],
    ['conn_haproxy', () => reconnect('haproxy', haproxy.pid, ports.haproxyRedis)],
    ['bulk_router', () => bulkWithCpu('router', router.pid, ports.routerSink)],
    ['bulk_haproxy', () => bulkWithCpu('haproxy', haproxy.pid, ports.haproxySink)],
    ['get_router', () => get(ports.routerRedis)],
    ['get_haproxy', () => get(ports.haproxyRedis)],
  ];
  for (let round = 0; round < settings.rounds; round++) {
    const order = [...steps.slice(round % steps.length), ...steps.slice(0, round % steps.length)];
    for (const [key, fn] of order) {
      add(key, await fn());
      process.stderr.write(`threads ${threads} round ${round + 1} ${key}: ${formatNumber(samples[key]!.at(-1))}\n`);
    }
  }
  const m = (k: string): number => median(samples[k] ?? []);
  const table = formatTable(
    ['client TLS terminated, re-encrypted to a verified TLS backend', 'router', 'HAProxy 2.6', 'router / HAProxy'],
    [
      versusRow(m, 'new conn/s (GET per connection, -k 0 -c 50)', 'conn'),
      versusRow(m, 'CPU µs per new connection (lower is better)', 'cpu_us_per_conn'),
      versusRow(m, 'bulk MB/s to a TLS sink', 'bulk'),
      versusRow(m, 'CPU ms per GB of bulk (lower is better)', 'cpu_ms_per_gb'),
      versusRow(m, 'GET ops/s (-c 50 -P 1)', 'get'),
    ],
  );
  const bulkBy = bulkClient
    ? `bulk: ${threads} stream(s) of ${settings.bulkMb} MB each from bench/native/tls-bulk-client.c`
    : `bulk: one stream of ${settings.bulkMb} MB from Node's TLS client`;
  const header = `router relay: ${health.relay}; ${await haproxyVersion()} (TLS 1.3 suites: ${settings.haproxySameSuites ? "the router's order" : "OpenSSL's default order"}); rounds ${settings.rounds}; ${bulkBy}`;
  const raw = Object.entries(samples)
    .map(([k, v]) => `${k}: ${v.map((x) => formatNumber(x)).join(' / ')}`)
    .join('\n');
  await haproxy.stop();
  await router.stop();
  await sink.stop();
  await redis.stop();
  return {
    relay: health.relay,
    tlsPorts: JSON.stringify(health.tlsPorts ?? []),
    samples,
    report: `${header}\n\n${table}\n\nsamples:\n${raw}`,
  };
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => void stopAll());
