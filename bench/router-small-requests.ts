/**
 * Question: on the two rows where a relay's per-message and per-connection costs dominate
 * (redis-benchmark GET with 50 clients and no pipelining, and new connections per second), where
 * does the router stand against HAProxy, and did a change to the router move it?
 *
 * A narrow, quicker companion of router-vs-haproxy.ts for iterating on those costs. Columns:
 * `haproxy` (nbthread 1), `router-native`, `router-js`, and with `--baseline DIR` the same two
 * router paths run from another build (DIR holds its `dist/` and `native-bindings/build/`), so
 * an A/B of two builds is measured side by side under the same background load. Rounds
 * alternate the columns and rotate their order; the table shows medians and the median of the
 * per-round ratios to HAProxy, and the CPU time each proxy's process group spent per request and
 * per connection (steadier than throughput when the machine is shared).
 *
 * New connections come from bench/native/conn-cycle-client.c (Node's generator without a compiler),
 * ended by the server (PING and QUIT) unless `--closed-by client`: see bench/lib/conn-rate.ts for
 * why a client-closes cycle measures the kernel's port reuse on one host rather than the proxies.
 *
 *   node dist/bench/router-small-requests.js [--rounds 5] [--requests 50000] [--pipeline 1] [--test get|set] [--seconds 2] [--closed-by server|client] [--baseline DIR] [--workers N] [--threads N]
 */
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { startBackends } from './lib/backends';
import { runConnRate } from './lib/conn-rate';
import { startHaproxy, type ProxiedService } from './lib/haproxy';
import { describeCpuIdle, hostFacts } from './lib/host-facts';
import { groupCpuSeconds, hostIdleSeconds, processSwitches } from './lib/proc-cpu';
import { acquireRunLock } from './lib/run-lock';
import { freePort, makeTempDir, sleep, stopAll } from './lib/processes';
import { buildNativeTool } from './lib/native-tool';
import { runRedisBenchmark } from './lib/redis-bench';
import { formatNumber, formatRatio, formatTable, median, writeResults } from './lib/report';
import { routerSupportsFlag, startRouter } from './lib/router-process';

interface Column {
  name: string;
  redisPort: number;
  /** Process group of the proxy, whose CPU time is read around each sample. */
  group: number;
}

type Key = 'get' | 'conn' | 'getCpuUs' | 'connCpuUs' | 'connHostIdle' | 'backendCpuUs' | 'backendSwitches';

function argValue(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const rounds = Number(argValue(argv, '--rounds') ?? 5);
  const requests = Number(argValue(argv, '--requests') ?? 50_000);
  const seconds = Number(argValue(argv, '--seconds') ?? 2);
  const pipeline = Number(argValue(argv, '--pipeline') ?? 1);
  // `--test set`: the same rows with SET (a request the size of its value, a five-byte reply).
  const test = argValue(argv, '--test') ?? 'get';
  if (test !== 'get' && test !== 'set') throw new Error(`--test: get or set, not ${test}`);
  const command = test.toUpperCase();
  const workers = argValue(argv, '--workers') !== undefined ? Number(argValue(argv, '--workers')) : undefined;
  const baseline = argValue(argv, '--baseline');
  // The routers run `--threads` relay threads (1 unless given: the CLI's default is the number of
  // cores, and HAProxy runs the same count); a baseline build without the flag keeps its default.
  const threads = Number(argValue(argv, '--threads') ?? 1);
  const closedBy = argValue(argv, '--closed-by') ?? 'server';
  if (closedBy !== 'server' && closedBy !== 'client') throw new Error(`--closed-by: server or client, not ${closedBy}`);

  await acquireRunLock('router-small-requests');
  const connClient = await buildNativeTool('conn-cycle-client', makeTempDir('sf-bench-conn-'));
  if (!connClient.ok)
    process.stderr.write(`conn-cycle-client not built (${connClient.reason}); new connections from Node\n`);
  const backends = await startBackends();
  const services = async (): Promise<ProxiedService[]> => [
    { name: 'redis', listenPort: await freePort(), targetHost: backends.host, targetPort: backends.redisPort },
  ];
  const columns: Column[] = [];
  const haproxyServices = await services();
  const haproxy = await startHaproxy('haproxy', {
    services: haproxyServices,
    threads: (workers ?? 1) * threads,
    splice: false,
  });
  columns.push({ name: 'haproxy', redisPort: haproxyServices[0].listenPort, group: haproxy.pid });
  const builds: Array<[string, string | undefined]> = [['', undefined]];
  // A baseline from before the layout by role keeps its CLI under dist/control/cli/.
  if (baseline !== undefined) {
    const current = join(baseline, 'dist', 'cli', 'sf.js');
    builds.push(['base-', existsSync(current) ? current : join(baseline, 'dist', 'control', 'cli', 'sf.js')]);
  }
  for (const [prefix, cliPath] of builds) {
    const hasThreads = cliPath === undefined || (await routerSupportsFlag('--threads', cliPath));
    for (const relay of ['native', 'js'] as const) {
      const list = await services();
      const router = await startRouter(`${prefix}router-${relay}`, {
        services: list,
        relay,
        workers,
        threads: hasThreads ? threads : undefined,
        cliPath,
      });
      if (router.relay !== relay) throw new Error(`${prefix}router-${relay}: /health reports relay=${router.relay}`);
      columns.push({ name: `${prefix}router-${relay}`, redisPort: list[0].listenPort, group: router.proc.pid });
    }
  }

  const samples: Record<string, Record<Key, number[]>> = {};
  for (const c of columns)
    samples[c.name] = {
      get: [],
      conn: [],
      getCpuUs: [],
      connCpuUs: [],
      connHostIdle: [],
      backendCpuUs: [],
      backendSwitches: [],
    };
  for (let round = 0; round < rounds; round++) {
    const order = columns.map((_, i) => columns[(i + round) % columns.length]);
    for (const c of order) {
      const cpu0 = groupCpuSeconds(c.group);
      const backendCpu0 = groupCpuSeconds(backends.redis.pid);
      const backendSwitches0 = processSwitches(backends.redis.pid);
      const rows = await runRedisBenchmark({
        host: '127.0.0.1',
        port: c.redisPort,
        clients: 50,
        requests,
        pipeline,
        tests: [test],
      });
      samples[c.name].get.push(rows[0].rps);
      samples[c.name].getCpuUs.push(((groupCpuSeconds(c.group) - cpu0) / requests) * 1e6);
      samples[c.name].backendCpuUs.push(((groupCpuSeconds(backends.redis.pid) - backendCpu0) / requests) * 1e6);
      samples[c.name].backendSwitches.push((processSwitches(backends.redis.pid) - backendSwitches0) / requests);
      await sleep(200);
    }
    for (const c of order) {
      const cpu0 = groupCpuSeconds(c.group);
      const idle0 = hostIdleSeconds();
      const started = process.hrtime.bigint();
      const r = await runConnRate({
        host: '127.0.0.1',
        port: c.redisPort,
        seconds,
        concurrency: 50,
        closedBy,
        ...(connClient.ok ? { nativeClient: connClient.path } : {}),
      });
      samples[c.name].conn.push(r.connectionsPerSecond);
      samples[c.name].connCpuUs.push(((groupCpuSeconds(c.group) - cpu0) / r.completed) * 1e6);
      const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
      samples[c.name].connHostIdle.push(((hostIdleSeconds() - idle0) / (wallSeconds * cpus().length)) * 100);
      await sleep(200);
    }
    process.stderr.write(`round ${round + 1}/${rounds} done\n`);
  }

  const paired = (name: string, key: Key): number =>
    median(samples[name][key].map((v, i) => v / samples.haproxy[key][i]));
  process.stdout.write(`${describeCpuIdle(hostFacts().cpuIdle)}\n\n`);
  process.stdout.write(
    `${formatTable(
      [
        'column',
        `${command} ops/s -P ${pipeline}`,
        '/haproxy',
        `CPU us/${command}`,
        'redis CPU us',
        'redis switches',
        `new conn/s (${closedBy} closes)`,
        '/haproxy',
        'CPU us/conn',
        'host idle %',
      ],
      columns.map((c) => [
        c.name,
        formatNumber(median(samples[c.name].get)),
        formatRatio(paired(c.name, 'get')),
        formatNumber(median(samples[c.name].getCpuUs)),
        formatNumber(median(samples[c.name].backendCpuUs)),
        median(samples[c.name].backendSwitches).toFixed(3),
        formatNumber(median(samples[c.name].conn)),
        formatRatio(paired(c.name, 'conn')),
        formatNumber(median(samples[c.name].connCpuUs)),
        formatNumber(median(samples[c.name].connHostIdle)),
      ]),
    )}\n`,
  );
  writeResults('router-small-requests', {
    date: new Date().toISOString(),
    host: hostFacts(),
    rounds,
    requests,
    pipeline,
    test,
    seconds,
    workers,
    threads,
    baseline,
    samples,
  });
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
