/**
 * The faults a schedule is made of. Each kind is one plug-in (`FaultKind`): it picks its target
 * with the schedule's PRNG, applies the fault, and says when it hit. New kinds (faults that need
 * features still being built) are added to `FAULT_KINDS` with `optIn` set, so the default
 * schedule leaves them out until they are expected to pass, and `--kinds` can still ask for them.
 */
import { FaultPlatform } from './fault-platform';
import type { FaultPlatformBase, PlatformMode, ServiceViewLite } from './fault-platform-base';
import type { Prng } from './fault-prng';
import { SfUpFaultPlatform } from './fault-sf-up-platform';
import type { EngineName } from './fault-writers';

export interface FaultService {
  name: string;
  engine: EngineName;
}

export interface FaultContext {
  platform: FaultPlatformBase;
  rng: Prng;
  services: readonly FaultService[];
  /** The step number, for unique names (e.g. a bad failover target). */
  step: number;
}

export interface AppliedFault {
  kind: string;
  /** The service the fault was aimed at, if any (all are checked). */
  service?: string;
  /** What was hit: a cell, an instance id, a process. */
  target?: string;
  detail: string;
  /** performance.now() when the fault hit; recovery is measured from here. */
  at: number;
  /** An operator action the platform must refuse: it must fail no write and leave no trace. */
  refused?: boolean;
  /** The CLI's exit code and output, for operator actions. */
  action?: { code: number; output: string; ms: number };
  /** Expected exit code of the action (0 unless said otherwise). */
  expectedCode?: number;
  /**
   * Exit codes that are all right, instead of `expectedCode`: a switchover asked while the service
   * had no running replica (an earlier fault not yet recovered) may succeed once one is back, or
   * be refused (exit 2, "no running replica to promote") as validation demands.
   */
  acceptedCodes?: number[];
  /**
   * When the platform was started again, for a fault that stops it on purpose (`sf-up-restart`):
   * recovery is measured from here, as the time the platform takes to serve again.
   */
  restartedAt?: number;
  /** Invariants the fault itself found broken (e.g. `sf up` did not stop on Ctrl-C). */
  problems?: Array<{ invariant: string; details: string }>;
}

export interface FaultKind {
  name: string;
  description: string;
  /** Set when the kind needs a feature under construction: why it is not in the default schedule. */
  optIn?: string;
  /** The platforms it can run on (`--platform`); every one when absent. */
  platforms?: readonly PlatformMode[];
  /** Why it cannot run on the other platforms. */
  platformsReason?: string;
  /** Its own `write-recovery` bound, when the general one does not fit what it does. */
  recoveryBoundMs?: number;
  apply(ctx: FaultContext): Promise<AppliedFault>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function targetService(ctx: FaultContext): Promise<{ svc: FaultService; view: ServiceViewLite | undefined }> {
  const svc = ctx.rng.pick(ctx.services);
  return { svc, view: await ctx.platform.service(svc.name) };
}

function primaryOf(view: ServiceViewLite | undefined): ServiceViewLite['instances'][number] | undefined {
  return view?.instances.find((i) => i.role === 'primary');
}

async function cliAction(
  ctx: FaultContext,
  kind: string,
  svc: FaultService,
  args: string[],
  detail: string,
  expectedCode = 0,
): Promise<AppliedFault> {
  const at = performance.now();
  const action = await ctx.platform.sf(args);
  return { kind, service: svc.name, detail, at, action, expectedCode, refused: expectedCode !== 0 };
}

/** A switchover is possible only with a running replica; without one it must be refused. */
function switchoverCodes(view: ServiceViewLite | undefined, replicaId?: string): Partial<AppliedFault> {
  const ready = view?.instances.some(
    (i) => i.role === 'replica' && i.state === 'running' && (replicaId === undefined || i.id === replicaId),
  );
  return ready ? {} : { acceptedCodes: [0, 2], detail: ' (no running replica when asked: exit 0 or 2)' };
}

/** Failovers the platform starts on its own. */
const AUTOMATIC_TRIGGERS = new Set(['cell-dead', 'instance-failed', 'lease-lost']);
/** How far before an action an automatic failover still counts as under way. */
const UNDER_WAY_MS = 30_000;

/**
 * An automatic failover of `service` that began from UNDER_WAY_MS before `at` on (an earlier fault
 * not yet recovered, or one the action's own CLI start-up overlapped), from its fencing history.
 */
async function automaticFailoverNear(ctx: FaultContext, service: string, at: number): Promise<string | undefined> {
  const wallFrom = Date.now() - (performance.now() - at) - UNDER_WAY_MS;
  try {
    const res = await ctx.platform.api<{ resources?: Array<{ trigger: string; step: string; at: string }> }>(
      'GET',
      `/v3/service_instances/${service}/fencing`,
    );
    const e = (res.body.resources ?? []).find((r) => AUTOMATIC_TRIGGERS.has(r.trigger) && Date.parse(r.at) >= wallFrom);
    return e ? `${e.trigger}/${e.step} at ${e.at}` : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A switchover or fence needs a replica to promote; asked while none was running (an earlier
 * fault not yet recovered) or while an automatic failover was under way, validation must refuse
 * it with exit 2 and leave the service alone, or it may succeed once a replica is back: either is
 * right. A refusal of a healthy service is still a violation.
 */
async function withCodes(ctx: FaultContext, fault: AppliedFault, codes: Partial<AppliedFault>): Promise<AppliedFault> {
  if (codes.acceptedCodes)
    return { ...fault, acceptedCodes: codes.acceptedCodes, detail: `${fault.detail}${codes.detail ?? ''}` };
  if (fault.action?.code !== 2 || !fault.service) return fault;
  const failover = await automaticFailoverNear(ctx, fault.service, fault.at);
  if (!failover) return fault;
  return {
    ...fault,
    acceptedCodes: [0, 2],
    detail: `${fault.detail} (refused during an automatic failover: ${failover})`,
  };
}

export const engineKill: FaultKind = {
  name: 'engine-kill',
  description: "SIGKILL of a service's primary engine process",
  async apply(ctx) {
    const { svc, view } = await targetService(ctx);
    const primary = primaryOf(view);
    const pid = primary ? (await ctx.platform.refreshEnginePids()).get(primary.id) : undefined;
    const at = performance.now();
    if (!primary || !pid)
      return { kind: this.name, service: svc.name, detail: 'no primary pid known: nothing killed', at };
    process.kill(pid, 'SIGKILL');
    return { kind: this.name, service: svc.name, target: primary.id, detail: `SIGKILL pid ${pid}`, at };
  },
};

export const cellKill: FaultKind = {
  name: 'cell-kill',
  description:
    'SIGKILL of a cell agent (engines keep running), restarted 1-4 s later as a supervisor would (by sf up itself under --platform sf-up)',
  async apply(ctx) {
    const { svc, view } = await targetService(ctx);
    // Mostly the primary's cell (the interesting case), sometimes any cell.
    const cell = ctx.rng.chance(0.7) && primaryOf(view) ? primaryOf(view)!.cell : ctx.rng.pick(ctx.platform.cellNames);
    const downMs = ctx.rng.int(1_000, 4_000);
    await ctx.platform.refreshEnginePids();
    const at = performance.now();
    const back = await ctx.platform.restartCell(cell, downMs);
    return {
      kind: this.name,
      service: svc.name,
      target: cell,
      detail: `SIGKILL ${cell}${primaryOf(view)?.cell === cell ? ` (primary of ${svc.name})` : ''}, ${back}`,
      at,
    };
  },
};

export const controlRestart: FaultKind = {
  name: 'control-restart',
  description: 'control stopped (SIGKILL or SIGTERM) and started again',
  async apply(ctx) {
    const signal = ctx.rng.chance(0.5) ? 'SIGKILL' : 'SIGTERM';
    const at = performance.now();
    await ctx.platform.restartControl(signal);
    return { kind: this.name, target: 'control', detail: `${signal}, restarted`, at };
  },
};

export const routerRestart: FaultKind = {
  name: 'router-restart',
  description: 'SIGKILL of the router, started again (it reloads its cache file or the table)',
  async apply(ctx) {
    const at = performance.now();
    await ctx.platform.restartRouter();
    return { kind: this.name, target: 'router', detail: 'SIGKILL, restarted', at };
  },
};

export const failoverPlanned: FaultKind = {
  name: 'failover-planned',
  description: '`sf failover NAME` on a healthy service (planned switchover)',
  async apply(ctx) {
    const { svc, view } = await targetService(ctx);
    return withCodes(
      ctx,
      await cliAction(ctx, this.name, svc, ['failover', svc.name], `sf failover ${svc.name}`),
      switchoverCodes(view),
    );
  },
};

export const failoverTo: FaultKind = {
  name: 'failover-to',
  description: '`sf failover NAME --to REPLICA`',
  async apply(ctx) {
    const { svc, view } = await targetService(ctx);
    const replica = view?.instances.find((i) => i.role === 'replica');
    if (!replica)
      return { kind: this.name, service: svc.name, detail: 'no replica: nothing done', at: performance.now() };
    return withCodes(
      ctx,
      await cliAction(
        ctx,
        this.name,
        svc,
        ['failover', svc.name, '--to', replica.id],
        `sf failover ${svc.name} --to ${replica.id}`,
      ),
      switchoverCodes(view, replica.id),
    );
  },
};

export const failoverBadTarget: FaultKind = {
  name: 'failover-bad-target',
  description: '`sf failover NAME --to nosuch`: must be refused (exit 2) without touching the service',
  async apply(ctx) {
    const { svc } = await targetService(ctx);
    const target = `nosuch-${ctx.step}`;
    return cliAction(
      ctx,
      this.name,
      svc,
      ['failover', svc.name, '--to', target],
      `sf failover ${svc.name} --to ${target}`,
      2,
    );
  },
};

export const fenceUnfence: FaultKind = {
  name: 'fence-unfence',
  description: '`sf fence NAME`, then `sf unfence NAME` 0.5-2 s later',
  async apply(ctx) {
    const { svc, view } = await targetService(ctx);
    const pauseMs = ctx.rng.int(500, 2_000);
    const at = performance.now();
    const fence = await ctx.platform.sf(['fence', svc.name]);
    await sleep(pauseMs);
    const unfence = await ctx.platform.sf(['unfence', svc.name]);
    // Only the fence must succeed: under `auto` the fence already promoted a replica and rejoined
    // the old primary, and `sf unfence` then answers 1 "nothing to unfence" by design.
    return withCodes(
      ctx,
      {
        kind: this.name,
        service: svc.name,
        detail: `sf fence ${svc.name} (exit ${fence.code}); ${pauseMs} ms; sf unfence (exit ${unfence.code})`,
        at,
        action: {
          code: fence.code,
          output: `fence: ${fence.output}\nunfence: ${unfence.output}`,
          ms: fence.ms + unfence.ms,
        },
        expectedCode: 0,
      },
      switchoverCodes(view),
    );
  },
};

export const stateRedisRestart: FaultKind = {
  name: 'state-redis-restart',
  description: 'SIGKILL of the state redis-server, restarted on its append-only file',
  async apply(ctx) {
    const at = performance.now();
    await ctx.platform.restartStateRedis(false);
    return { kind: this.name, target: 'state-redis', detail: 'SIGKILL, restarted with its AOF', at };
  },
};

export const stateRedisWipe: FaultKind = {
  name: 'state-redis-wipe',
  description: 'the state redis-server comes back empty (files lost)',
  async apply(ctx) {
    const at = performance.now();
    await ctx.platform.restartStateRedis(true);
    return { kind: this.name, target: 'state-redis', detail: 'SIGKILL, files deleted, restarted empty', at };
  },
};

export const platformRestart: FaultKind = {
  name: 'platform-restart',
  // The harness plays the supervisor: it restarts the processes `sf up` supervises one by one
  // (bench/lib/fault-platform.ts), with the same effect on engines and the store as a restart
  // of a supervising `sf up` (cli/supervisor.ts): both are kept.
  description: 'what a restart of `sf up` does: control, router and cells stopped and started, engines kept',
  platforms: ['processes'],
  platformsReason:
    'it is the harness playing the supervisor; with --platform sf-up, sf-up-restart restarts the real one',
  async apply(ctx) {
    const platform = ctx.platform;
    if (!(platform instanceof FaultPlatform)) throw new Error('platform-restart needs --platform processes');
    const at = performance.now();
    await platform.restartPlatformProcesses();
    return { kind: this.name, target: 'control, router, cells', detail: 'SIGTERM all, restarted', at };
  },
};

export const cellPartition: FaultKind = {
  name: 'cell-partition',
  description:
    'the link of the cell in its own network namespace is cut for 2-8 s, then healed (the agent keeps running)',
  optIn: 'needs root for network namespaces; the checker then runs one cell in a namespace',
  platforms: ['processes'],
  platformsReason:
    'it needs a cell in a network namespace of its own, and sf up starts every cell in the host namespace',
  async apply(ctx) {
    const platform = ctx.platform;
    if (!(platform instanceof FaultPlatform)) throw new Error('cell-partition needs --platform processes');
    const cell = platform.partitionableCellName;
    const at = performance.now();
    if (!cell) return { kind: this.name, detail: 'no partitionable cell: nothing done', at };
    const ms = ctx.rng.int(2_000, 8_000);
    const onIt: string[] = [];
    for (const svc of ctx.services) {
      const view = await ctx.platform.service(svc.name);
      for (const i of view?.instances ?? []) if (i.cell === cell) onIt.push(`${i.id} (${i.role})`);
    }
    const cutAt = performance.now();
    await platform.partitionCell(ms);
    return {
      kind: this.name,
      target: cell,
      detail: `${cell} cut off for ${ms} ms; on it: ${onIt.join(', ') || 'nothing'}`,
      at: cutAt,
    };
  },
};

/**
 * The measure for a restart of `sf up` with replicated services: all serve their data within
 * 15 s of the new start (engines are stopped by Ctrl-C and started again with their volumes).
 */
const SF_UP_RESTART_BOUND_MS = 15_000;

export const sfUpRestart: FaultKind = {
  name: 'sf-up-restart',
  description:
    '`sf up` stopped with Ctrl-C (SIGINT to its process group as a terminal sends it, or to sf up alone) and started again on the same data directory',
  platforms: ['sf-up'],
  platformsReason: 'it restarts a real sf up process',
  recoveryBoundMs: SF_UP_RESTART_BOUND_MS,
  async apply(ctx) {
    const platform = ctx.platform;
    if (!(platform instanceof SfUpFaultPlatform)) throw new Error('sf-up-restart needs --platform sf-up');
    const terminal = ctx.rng.chance(0.5);
    const at = performance.now();
    const r = await platform.restartSfUp(terminal);
    const problems: AppliedFault['problems'] = [];
    if (r.exitCode !== 0)
      problems.push({
        invariant: 'sf-up-stops',
        details: `sf up ${r.exitCode === null ? 'did not exit' : `exited ${r.exitCode}`} ${Math.round(r.stopMs)} ms after SIGINT`,
      });
    if (r.leftoverComponents.length > 0)
      problems.push({
        invariant: 'sf-up-stops',
        details: `components still running after sf up exited: ${r.leftoverComponents.join(', ')} (killed)`,
      });
    return {
      kind: this.name,
      target: 'sf up',
      detail:
        `SIGINT to ${terminal ? 'the process group (terminal Ctrl-C)' : 'sf up alone'}: exit ${r.exitCode ?? '-'} after ${r.stopMs} ms, ` +
        `${r.enginesLeftRunning} engine(s) still running; started again, ready after ${r.readyMs} ms`,
      at,
      restartedAt: r.startedAt,
      problems,
    };
  },
};

/** Every known kind; the default schedule uses those without `optIn`. */
export const FAULT_KINDS: readonly FaultKind[] = [
  engineKill,
  cellKill,
  controlRestart,
  routerRestart,
  failoverPlanned,
  failoverTo,
  failoverBadTarget,
  fenceUnfence,
  stateRedisRestart,
  stateRedisWipe,
  platformRestart,
  cellPartition,
  sfUpRestart,
];

export function runsOn(kind: FaultKind, mode: PlatformMode): boolean {
  return !kind.platforms || kind.platforms.includes(mode);
}

/** The default schedule of a platform: the kinds without `optIn` that run on it. */
export function defaultFaultKinds(mode: PlatformMode = 'processes'): FaultKind[] {
  return FAULT_KINDS.filter((k) => !k.optIn && runsOn(k, mode));
}

/**
 * Kinds by name, for platform `mode`; throws naming an unknown one, or one that cannot run on
 * that platform and why.
 */
export function faultKindsByName(names: readonly string[], mode: PlatformMode = 'processes'): FaultKind[] {
  return names.map((n) => {
    const kind = FAULT_KINDS.find((k) => k.name === n);
    if (!kind) throw new Error(`unknown fault kind '${n}' (known: ${FAULT_KINDS.map((k) => k.name).join(', ')})`);
    if (!runsOn(kind, mode))
      throw new Error(
        `fault kind '${n}' cannot run with --platform ${mode}: ${kind.platformsReason ?? `it runs on ${kind.platforms?.join(', ')}`}`,
      );
    return kind;
  });
}
