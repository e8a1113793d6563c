/**
 * The columns of the router benchmark. Each target is a configuration (which proxy, how many
 * threads or workers, which relay path) that exposes the same two services, Redis and iperf3,
 * on its own ports; the harness treats them all alike.
 */
import type { Backends } from './backends';
import { startHaproxy, type ProxiedService } from './haproxy';
import { freePort, startProcess, waitForPort, type ManagedProcess } from './processes';
import { routerCliAvailable, startRouter } from './router-process';

export type TargetSpec =
  | { name: string; kind: 'direct' }
  | { name: string; kind: 'haproxy'; threads: number; splice: boolean }
  | { name: string; kind: 'naive-pipe' }
  | { name: string; kind: 'router'; relay: 'js' | 'native'; workers?: number; threads?: number };

export interface RunningTarget {
  spec: TargetSpec;
  redisPort: number;
  iperfPort: number;
  /** Facts recorded with the results: relay path, router /health, pid. */
  info: Record<string, unknown>;
  proc?: ManagedProcess;
}

export type StartedTarget = { ok: true; target: RunningTarget } | { ok: false; spec: TargetSpec; reason: string };

/** Threads (HAProxy) or workers (router) a target uses; pairs each router with its HAProxy. */
export function targetThreads(spec: TargetSpec): number {
  if (spec.kind === 'haproxy') return spec.threads;
  if (spec.kind === 'router') return (spec.workers ?? 1) * (spec.threads ?? 1);
  return 1;
}

async function services(backends: Backends): Promise<ProxiedService[]> {
  return [
    { name: 'redis', listenPort: await freePort(), targetHost: backends.host, targetPort: backends.redisPort },
    { name: 'iperf', listenPort: await freePort(), targetHost: backends.host, targetPort: backends.iperfPort },
  ];
}

function ports(list: ProxiedService[]): { redisPort: number; iperfPort: number } {
  return { redisPort: list[0].listenPort, iperfPort: list[1].listenPort };
}

/** Starts one target; a target that cannot start becomes a skipped column, not a failed run. */
export async function startTarget(spec: TargetSpec, backends: Backends): Promise<StartedTarget> {
  try {
    return await startTargetOrThrow(spec, backends);
  } catch (err) {
    return { ok: false, spec, reason: `did not start: ${String(err).slice(0, 600)}` };
  }
}

async function startTargetOrThrow(spec: TargetSpec, backends: Backends): Promise<StartedTarget> {
  switch (spec.kind) {
    case 'direct':
      return { ok: true, target: { spec, redisPort: backends.redisPort, iperfPort: backends.iperfPort, info: {} } };
    case 'haproxy': {
      const list = await services(backends);
      const proc = await startHaproxy(spec.name, { services: list, threads: spec.threads, splice: spec.splice });
      return {
        ok: true,
        target: { spec, ...ports(list), proc, info: { pid: proc.pid, nbthread: spec.threads, splice: spec.splice } },
      };
    }
    case 'naive-pipe': {
      const list = await services(backends);
      const mappings = list.map((s) => `${s.listenPort}:${s.targetHost}:${s.targetPort}`);
      const proc = startProcess(spec.name, process.execPath, [`${__dirname}/naive-pipe.js`, ...mappings]);
      for (const s of list) await waitForPort(s.listenPort, proc);
      return { ok: true, target: { spec, ...ports(list), proc, info: { pid: proc.pid } } };
    }
    case 'router': {
      if (!routerCliAvailable()) return { ok: false, spec, reason: 'dist/cli/sf.js is not built' };
      const list = await services(backends);
      try {
        const router = await startRouter(spec.name, {
          services: list,
          relay: spec.relay,
          workers: spec.workers,
          threads: spec.threads,
        });
        if (router.relay !== spec.relay) {
          // The router fell back (e.g. the addon is not built): this column would duplicate another.
          await router.proc.stop();
          return { ok: false, spec, reason: `asked for SF_RELAY=${spec.relay}, /health reports relay=${router.relay}` };
        }
        return {
          ok: true,
          target: {
            spec,
            ...ports(list),
            proc: router.proc,
            info: {
              pid: router.proc.pid,
              relay: router.relay,
              workers: spec.workers ?? 1,
              threads: spec.threads,
              health: router.health,
            },
          },
        };
      } catch (err) {
        return { ok: false, spec, reason: `router did not start: ${String(err).slice(0, 600)}` };
      }
    }
  }
}
