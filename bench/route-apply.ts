/**
 * How long does a router take to apply big route tables: 10,000 new ports, the same 10,000 ports
 * all changed, and a one-route change to a 10,000-route table? And to close those 10,000 ports?
 * Measured side by side in one process, the columns alternating router by router: the native
 * accept path with a big change's ports steered to one listening socket (docs/native-relay.md,
 * "Steering many ports to one socket"), the native path with a listening socket per port
 * (`steerMinPorts: Infinity`), and the JS path (DESIGN: 10,000 routes in under 100 ms; a one-route
 * change in under 5 ms). Time is `Router.applyTable` until its promise resolves (every port
 * open), after the table is parsed (parsing is `micro-route-delta`'s question), and
 * `Router.close` until its promise resolves.
 *
 *   node dist/bench/route-apply.js [--routes 10000] [--repeat 3] [--first-port 17000] [--host 127.0.0.1]
 *     [--only native|js]
 *
 * `--host` is the address the route ports bind (another loopback address such as 127.0.0.2 keeps a
 * 10,000-port run clear of other programs listening on 127.0.0.1).
 */
import { loadavg } from 'node:os';
import { Router } from '../router/router';
import { createJsRelay } from '../router/relay-js';
import { createNativeRelay } from '../router/relay-native';
import type { Relay } from '../router/relay';
import type { RouterOptions } from '../router/router-options';
import { parseRouteTable, type Route, type RouteTable } from '../protocol';
import { silentLogger } from '../common/logger';
import { writeResults } from './lib/report';

interface Case {
  name: string;
  ms: number[];
  /** CPU time of the whole process (user + system) over the same interval. */
  cpuMs: number[];
}

function argValue(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

function table(version: number, firstPort: number, routes: number, epoch: number): RouteTable {
  return parseRouteTable({
    version,
    routes: Array.from({ length: routes }, (_, i) => ({
      port: firstPort + i,
      mode: 'primary',
      backends: [{ id: `b${i}`, host: '127.0.0.1', port: 6379, role: 'primary', epoch }],
    })),
  });
}

/**
 * Wall time, and CPU time, which moves far less with the shared machine's load (a wall time
 * under a load average of 30 on 2 cores is mostly waiting for a core).
 */
async function timed(router: Router, t: RouteTable, into?: Case): Promise<{ failed: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await router.applyTable(t);
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  into?.ms.push(ms);
  into?.cpuMs.push((cpu.user + cpu.system) / 1000);
  return { failed: result.failed.length };
}

interface Column {
  name: string;
  relay: Relay;
  options: Partial<RouterOptions>;
  cases: Case[];
}

function newCases(routes: number): Case[] {
  return [
    { name: `${routes} new ports`, ms: [], cpuMs: [] },
    { name: `${routes} changed ports`, ms: [], cpuMs: [] },
    { name: `1 route changed of ${routes}`, ms: [], cpuMs: [] },
    { name: `${routes} ports closed`, ms: [], cpuMs: [] },
  ];
}

/** One router's life: the new table, all changed, five one-route changes, close. */
async function measureOnce(
  column: Column,
  r: number,
  routes: number,
  firstPort: number,
  bindHost: string,
): Promise<void> {
  const cases = column.cases;
  const router = new Router({ relay: column.relay, bindHost, logger: silentLogger(), ...column.options });
  let closedTimed = false;
  try {
    const first = await timed(router, table(1, firstPort, routes, 1), cases[0]);
    // Ports other processes hold are reported and left out; the rest of the table applies.
    if (first.failed > 0) process.stdout.write(`${first.failed} ports in use by others were left out\n`);
    await timed(router, table(2, firstPort, routes, 2), cases[1]);
    // A delta as route sources apply it: every other route object is kept as it was.
    for (let k = 0; k < 5; k++) {
      const current = router.currentTable();
      const i = (r * 5 + k) % routes;
      const changed: Route = {
        ...current.routes[i]!,
        backends: current.routes[i]!.backends.map((b) => ({ ...b, epoch: b.epoch + 1 })),
      };
      const next: RouteTable = {
        version: current.version + 1,
        routes: current.routes.map((x, j) => (j === i ? changed : x)),
      };
      await timed(router, next, cases[2]);
    }
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    closedTimed = true;
    await router.close();
    const cpu = process.cpuUsage(c0);
    cases[3]!.ms.push(performance.now() - t0);
    cases[3]!.cpuMs.push((cpu.user + cpu.system) / 1000);
  } finally {
    if (!closedTimed) await router.close();
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const routes = Number(argValue(argv, '--routes') ?? 10_000);
  const repeat = Number(argValue(argv, '--repeat') ?? 3);
  const firstPort = Number(argValue(argv, '--first-port') ?? 17_000);
  const bindHost = argValue(argv, '--host') ?? '127.0.0.1';
  const only = argValue(argv, '--only');
  const load = loadavg();
  const columns: Column[] = [];
  const native = only !== 'js' ? createNativeRelay({ threads: 2 }) : undefined;
  if (only !== 'js' && !native) process.stdout.write('native accept: skipped (addon not built)\n');
  if (native) {
    columns.push({ name: 'native, steered', relay: native, options: { steerMinPorts: 1 }, cases: newCases(routes) });
    columns.push({
      name: 'native, a listener per port',
      relay: native,
      options: { steerMinPorts: Infinity },
      cases: newCases(routes),
    });
  }
  if (only !== 'native') columns.push({ name: 'js', relay: createJsRelay(), options: {}, cases: newCases(routes) });
  for (let r = 0; r < repeat; r++) {
    for (const column of columns) await measureOnce(column, r, routes, firstPort, bindHost);
  }
  const steering = native?.steering?.();
  if (steering && !steering.available)
    process.stdout.write(
      `port steering unavailable: ${steering.reason || 'not tried'} (both native columns listen per port)\n`,
    );
  const results: Record<
    string,
    Array<{ name: string; medianMs: number; medianCpuMs: number; ms: number[]; cpuMs: number[] }>
  > = {};
  // Every sample is kept in the JSON: the first router of a process pays for compiling the
  // JavaScript and for the kernel's first slab pages, and the median hides it.
  for (const column of columns)
    results[column.name] = column.cases.map((c) => ({ ...c, medianMs: median(c.ms), medianCpuMs: median(c.cpuMs) }));
  const names = Object.keys(results);
  const head = `Route table apply, median wall ms / CPU ms (load average ${load.map((l) => l.toFixed(1)).join(' ')})`;
  process.stdout.write(
    `\n${head}\n\n| case | ${names.join(' | ')} | CPU ratio |\n| --- | ${names.map(() => '---').join(' | ')} | ---: |\n`,
  );
  const rows = names.length > 0 ? results[names[0]!]!.length : 0;
  for (let i = 0; i < rows; i++) {
    const row = names.map((n) => results[n]![i]!);
    // Steered against a listener per port, when both ran.
    const ratio = row.length >= 2 ? `${(row[0]!.medianCpuMs / row[1]!.medianCpuMs).toFixed(2)}x` : '';
    const cells = row.map((c) => `${c.medianMs.toFixed(1)} / ${c.medianCpuMs.toFixed(1)}`);
    process.stdout.write(`| ${row[0]!.name} | ${cells.join(' | ')} | ${ratio} |\n`);
  }
  const path = writeResults('route-apply', {
    date: new Date().toISOString(),
    routes,
    repeat,
    loadavg: load,
    loadavgAfter: loadavg(),
    steering,
    results,
  });
  process.stdout.write(`\nresults: ${path}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
