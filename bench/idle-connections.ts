/**
 * Question: how much memory does one router need to hold 10,000 idle client connections, each
 * relayed to its backend? DESIGN.md's goal is under 200 MB RSS.
 *
 * Each client connects through the router to redis-server, does one PING round trip (so the
 * backend side is established too), then stays idle. RSS is read from /proc after a settle time.
 *
 *   node dist/bench/idle-connections.js [--connections N] [--cycles N] [--relay js|native] [--workers N] [--threads N]
 *
 * Every relayed connection costs the router two descriptors. Where RLIMIT_NOFILE's hard limit
 * cannot fit 2 x N (containers often cap it at 20000 without CAP_SYS_RESOURCE), the run holds as
 * many as fit and also reports RSS extrapolated linearly to N.
 */
import { connect, type Socket } from 'node:net';
import { startRedis } from './lib/backends';
import { groupMemory, openFileCount, type MemorySample } from './lib/proc-memory';
import { freePort, hardFileLimit, httpGetText, sleep, stopAll } from './lib/processes';
import { formatNumber, formatTable, writeResults } from './lib/report';
import { acquireRunLock } from './lib/run-lock';
import { routerCliAvailable, routerSupportsFlag, startRouter } from './lib/router-process';

const GOAL_MIB = 200;
/** Descriptors the router needs besides the relayed pairs (listeners, admin, stdio, epoll...). */
const ROUTER_FD_RESERVE = 100;
const OPEN_BATCH = 500;
const SETTLE_MS = 3000;
const OPEN_TIMEOUT_MS = 5000;

interface Settings {
  connections: number;
  /** Fill-and-close cycles; from the second on they tell retained memory from a leak. */
  cycles: number;
  relay: 'js' | 'native';
  workers: number | undefined;
  /** `--threads` of the router (relay threads in one process); undefined keeps its default (the cores). */
  threads: number | undefined;
}

function parseArgs(argv: string[]): Settings {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const relay = value('--relay') ?? 'js';
  if (relay !== 'js' && relay !== 'native') throw new Error('--relay must be js or native');
  const workers = value('--workers');
  const threads = value('--threads');
  return {
    connections: Number(value('--connections') ?? 10_000),
    cycles: Number(value('--cycles') ?? 3),
    relay,
    workers: workers === undefined ? undefined : Number(workers),
    threads: threads === undefined ? undefined : Number(threads),
  };
}

/** Opens one client through the router and completes a PING round trip on it. */
function openIdleClient(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let received = 0;
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received >= '+PONG\r\n'.length) {
        socket.off('data', onData);
        socket.off('error', reject);
        socket.setTimeout(0);
        // A reset while idle is counted through 'close'; it must not crash the run.
        socket.on('error', () => undefined);
        resolve(socket);
      }
    };
    // A pair the router never completes must fail this client, not hang the run.
    socket.setTimeout(OPEN_TIMEOUT_MS, () => socket.destroy(new Error(`no PONG within ${OPEN_TIMEOUT_MS} ms`)));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

function mib(kib: number): number {
  return kib / 1024;
}

/** Whole-run limit: a router that stops answering must end the run with a report, not hang it. */
const WATCHDOG_MS = 5 * 60_000;

async function main(): Promise<void> {
  const settings = parseArgs(process.argv.slice(2));
  let phase = 'starting';
  if (!routerCliAvailable()) throw new Error('dist/cli/sf.js is not built (npx tsc -p .)');
  const workers =
    settings.workers !== undefined && (await routerSupportsFlag('--workers')) ? settings.workers : undefined;
  const limit = await hardFileLimit();
  const held = Math.min(settings.connections, Math.floor((limit - ROUTER_FD_RESERVE) / 2));
  if (held < settings.connections) {
    process.stderr.write(
      `RLIMIT_NOFILE hard limit ${limit} fits ${held} relayed pairs, not ${settings.connections}; extrapolating\n`,
    );
  }

  await acquireRunLock('idle-connections');
  const watchdog = setTimeout(() => {
    process.stderr.write(`idle-connections: no result after ${WATCHDOG_MS / 1000} s (phase: ${phase}); stopping\n`);
    void stopAll().finally(() => process.exit(1));
  }, WATCHDOG_MS);
  watchdog.unref();
  const redisPort = await freePort();
  await startRedis(redisPort, { maxClients: held + 1000 });
  const routePort = await freePort();
  const router = await startRouter('router', {
    services: [{ name: 'redis', listenPort: routePort, targetHost: '127.0.0.1', targetPort: redisPort }],
    relay: settings.relay,
    workers,
    ...(settings.threads !== undefined ? { threads: settings.threads } : {}),
    fileLimit: 2 * settings.connections + ROUTER_FD_RESERVE,
  });
  phase = 'router idle';
  await sleep(SETTLE_MS);
  const baseline = groupMemory(router.proc.pid);

  let closedEarly = 0;
  let failedToOpen = 0;
  /** Opens `held` idle clients through the router; failures are counted, not fatal. */
  const fill = async (): Promise<Socket[]> => {
    const clients: Socket[] = [];
    let failed = 0;
    while (clients.length + failed < held) {
      const batch = Math.min(OPEN_BATCH, held - clients.length - failed);
      if (process.env.SF_BENCH_TRACE)
        process.stderr.write(`opening ${batch}, held ${clients.length}, failed ${failed}\n`);
      const opened = await Promise.allSettled(Array.from({ length: batch }, () => openIdleClient(routePort)));
      for (const r of opened) {
        if (r.status === 'rejected') {
          failed++;
          if (failed > held / 10) throw new Error(`too many connections failed to open: ${String(r.reason)}`);
          continue;
        }
        clients.push(r.value);
      }
    }
    failedToOpen += failed;
    return clients;
  };

  const t0 = Date.now();
  phase = 'opening';
  const clients = await fill();
  for (const c of clients) c.once('close', () => closedEarly++);
  const openMs = Date.now() - t0;
  phase = 'holding';
  await sleep(SETTLE_MS);
  const loaded: MemorySample = groupMemory(router.proc.pid);
  const routerFds = openFileCount(router.proc.pid);
  let health: unknown;
  try {
    health = JSON.parse((await httpGetText(`http://127.0.0.1:${router.adminPort}/health`)).body);
  } catch (err) {
    health = { error: String(err) };
  }
  const closedWhileIdle = closedEarly;
  // Memory must also come back when the clients leave; a leak per connection would show here.
  for (const s of clients) s.destroy();
  await sleep(SETTLE_MS);
  const after = groupMemory(router.proc.pid);

  // RSS rarely shrinks after a close (V8 and malloc keep freed pages), so "after close" alone
  // cannot tell retention from a leak; filling again can: a leak grows with every cycle.
  const cycles: Array<{ loadedMiB: number; afterCloseMiB: number }> = [
    { loadedMiB: mib(loaded.rssKiB), afterCloseMiB: mib(after.rssKiB) },
  ];
  for (let cycle = 1; cycle < settings.cycles; cycle++) {
    phase = `refill ${cycle + 1}`;
    const again = await fill();
    await sleep(SETTLE_MS);
    const refilled = groupMemory(router.proc.pid);
    for (const s of again) s.destroy();
    await sleep(SETTLE_MS);
    cycles.push({ loadedMiB: mib(refilled.rssKiB), afterCloseMiB: mib(groupMemory(router.proc.pid).rssKiB) });
  }

  const perConnKiB = (loaded.rssKiB - baseline.rssKiB) / held;
  const extrapolatedKiB = baseline.rssKiB + perConnKiB * settings.connections;
  // The goal is judged on the worst fill: a refill can land before the collector has returned
  // the previous cycle's garbage, and an operator sees that RSS too.
  const worstLoadedMiB = Math.max(...cycles.map((c) => c.loadedMiB)) * (settings.connections / held);
  const result = {
    benchmark: 'idle-connections',
    date: new Date().toISOString(),
    settings: { ...settings, workers: workers ?? 1 },
    relay: router.relay,
    fileLimitHard: limit,
    connectionsHeld: held,
    connectionsWanted: settings.connections,
    closedWhileIdle,
    failedToOpen,
    openMs,
    routerFds,
    health,
    rssMiB: {
      baseline: mib(baseline.rssKiB),
      loaded: mib(loaded.rssKiB),
      peak: mib(loaded.peakKiB),
      afterClose: mib(after.rssKiB),
      extrapolatedToWanted: mib(extrapolatedKiB),
    },
    perConnectionKiB: perConnKiB,
    cycles,
    goalMiB: GOAL_MIB,
    worstLoadedMiB,
    goalMet: worstLoadedMiB < GOAL_MIB,
    pids: loaded.pids,
  };
  // One file per configuration, so the js, native and multi-worker runs sit side by side.
  const path = writeResults(`idle-connections-${router.relay}-w${workers ?? 1}`, result);
  process.stdout.write(`\nIdle connections through one router (relay=${router.relay}, workers=${workers ?? 1})\n\n`);
  process.stdout.write(
    `${formatTable(
      ['measure', 'value'],
      [
        ['connections held', formatNumber(held)],
        ['router RSS idle (MiB)', formatNumber(result.rssMiB.baseline)],
        [`router RSS with ${held} (MiB)`, formatNumber(result.rssMiB.loaded)],
        ['router peak RSS (MiB)', formatNumber(result.rssMiB.peak)],
        ['per connection (KiB)', formatNumber(perConnKiB)],
        [
          `RSS at ${settings.connections} (MiB)`,
          `${formatNumber(result.rssMiB.extrapolatedToWanted)}${held < settings.connections ? ' (extrapolated)' : ''}`,
        ],
        ['RSS after all closed (MiB)', formatNumber(result.rssMiB.afterClose)],
        ...cycles
          .slice(1)
          .map((c, i) => [
            `cycle ${i + 2}: loaded / closed (MiB)`,
            `${formatNumber(c.loadedMiB)} / ${formatNumber(c.afterCloseMiB)}`,
          ]),
        [`worst fill, at ${settings.connections} (MiB)`, formatNumber(worstLoadedMiB)],
        ['closed while idle', String(closedWhileIdle)],
        ['failed to open', String(failedToOpen)],
        [`goal < ${GOAL_MIB} MiB`, result.goalMet ? 'met' : 'MISSED'],
      ],
    )}\n\nresults: ${path}\n`,
  );
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
