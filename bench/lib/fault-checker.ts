/**
 * The fault-schedule checker, in the spirit of Jepsen: a platform with three cells, a
 * Redis and a PostgreSQL service (one replica each, `durability: sync`), a writer per service
 * through the router logging every acknowledged write, and a seeded schedule of faults applied
 * one at a time with random gaps. Invariants (DESIGN.md, "Unhappy paths are the product"):
 *
 * - `acked-write-lost`: every acknowledged write is present, read through the router;
 * - `read-back`: that read itself succeeds (a failure to read proves no loss, so it has its own name);
 * - `one-primary`: at most one instance of a service claims to be primary (`INFO
 *   replication` `role:`, `pg_is_in_recovery()` on every instance port ever seen), probed continuously; two claims are confirmed by a second
 *   round of probes before they count, as one round is not one instant;
 * - `one-writable`: at most one of them would also commit a write (see fault-probes.ts);
 * - `router-points-at-primary`: once settled, the router's active backend is that primary;
 * - `write-recovery`: a write through the router is acknowledged within 10 s of the fault;
 * - `running-means-writable`: `running` only while writes through the router succeed (checked
 *   with a fresh write at each settle point, and continuously against the writer's history);
 * - `settles`: the service is `running` with all instances again within the settle timeout;
 * - `refused-action-harmless`: a refused operator action fails no write and changes no epoch;
 * - `action-exit-code`: an operator action exits as expected (0, or 2 for a refused one);
 * - `volume-kept`: no volume on disk ever disappears (nothing in a run deletes a service, and a
 *   volume is never deleted because its cell was missing);
 * - `sf-up-stops` (platform `sf-up`): Ctrl-C stops `sf up` with exit 0 and leaves no component
 *   running.
 * Each violation is printed at once with the seed and the step that found it. Writers, probes
 * and read-backs all connect as one service key per service, created right after the service.
 */
import { randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { FaultPlatform, type FaultPlatformOptions } from './fault-platform';
import type { FaultPlatformBase, PlatformMode, ServiceViewLite } from './fault-platform-base';
import { SfUpFaultPlatform } from './fault-sf-up-platform';
import { createPrng } from './fault-prng';
import { probeRole, type RoleProbe } from './fault-probes';
import { runsOn, type AppliedFault, type FaultKind, type FaultService } from './fault-kinds';
import {
  missingWrites,
  probeWrite,
  startWriter,
  type EngineName,
  type ServiceAuth,
  type ServiceWriter,
} from './fault-writers';

/** A read-back of the acknowledged writes is tried this often, this far apart, before it fails. */
const READ_BACK_ATTEMPTS = 3;
const READ_BACK_RETRY_MS = 3_000;

export interface CheckerOptions {
  seed: number;
  faults: number;
  engines: readonly EngineName[];
  kinds: readonly FaultKind[];
  /**
   * The first faults take every kind once, in a seeded random order, so a short run covers them
   * all; later faults (if `faults` is larger) pick at random. @default false
   */
  eachKindFirst?: boolean;
  /** Random pause before each fault, in ms. @default [1000, 4000] */
  gapMs?: readonly [number, number];
  /**
   * Writes must be acknowledged again within this long after a fault, else `write-recovery` is
   * violated. `null` measures and reports recovery time only (a timing bound means little on an
   * overloaded machine); a service whose writes never come back within the settle timeout is a
   * violation either way. @default 10000
   */
  recoveryBoundMs?: number | null;
  /** How long writes may fail while the status says `running` (router restarts excluded). @default 5000 */
  runningWhileFailingMs?: number;
  /** How long a service may take to be `running` with every instance again. @default 60000 */
  settleTimeoutMs?: number;
  /** How often every instance port is probed. @default 750 */
  probeIntervalMs?: number;
  /**
   * `processes`: the checker starts and restarts each platform process itself; `sf-up`: one real
   * `sf up` does, and the checker kills what it supervises. @default 'processes'
   */
  platformMode?: PlatformMode;
  /** Options of the platform; under `sf-up` only `logDir` and `logLevel` apply. */
  platform?: FaultPlatformOptions;
  /** Progress and violations as they happen. @default console.log */
  log?: (line: string) => void;
}

export interface Violation {
  seed: number;
  /** 0 while setting up, K+1 for the final check. */
  step: number;
  fault: string;
  invariant: string;
  service?: string;
  /** Milliseconds since the run started. */
  atMs: number;
  details: string;
}

export interface StepRecord {
  step: number;
  kind: string;
  service?: string;
  target?: string;
  detail: string;
  atMs: number;
  action?: { code: number; output: string; ms: number };
  /** Per service: fault -> first acknowledged write issued after it (null: none within the settle timeout). */
  recoveryMs: Record<string, number | null>;
  /** Per service: failed write attempts from this fault to the next one (or the end). */
  failedWrites: Record<string, number>;
  /** Fault -> every service `running` with all instances again (null: did not settle). */
  settledMs: number | null;
  /** Volumes on disk before the fault and gone once it settled (none may ever be). */
  volumesDeleted: number;
  /** The machine's 1-minute load average when the fault hit. */
  load1: number;
}

export interface KindSummary {
  kind: string;
  engine: EngineName;
  faults: number;
  recoveryP50Ms: number | null;
  recoveryP99Ms: number | null;
  recoveryMaxMs: number | null;
  failedWrites: number;
  failedWritesPerFault: number;
  /** Volumes deleted during faults of this kind (counted once per kind, not per engine). */
  volumesDeleted: number;
  violations: number;
}

export interface CheckerResult {
  seed: number;
  faults: number;
  engines: EngineName[];
  kinds: string[];
  startedAt: string;
  durationMs: number;
  acknowledged: Record<string, number>;
  failedWrites: Record<string, number>;
  steps: StepRecord[];
  summary: KindSummary[];
  violations: Violation[];
  /** Set when the run itself broke (not an invariant): the error and the platform's log tails. */
  aborted?: { error: string; logs: Record<string, string> };
}

interface FencingEntryLite {
  step: string;
  trigger: string;
  outcome: string;
  instance_id: string | null;
  message: string;
  /** ISO time. */
  at: string;
}

const SERVICE_NAMES: Record<EngineName, string> = { redis: 'fault-redis', postgres: 'fault-pg' };
const VOLUME_MB: Record<EngineName, number> = { redis: 64, postgres: 128 };
/** How long writes may fail while the status says `running` before that is a violation. */
const RUNNING_WHILE_FAILING_MS = 5_000;
/** A write's own deadline (fault-writers.ts): a failure is known this long after the write began. */
const WRITE_TIMEOUT_MS = 2_000;
/** No fault counts as settled sooner: longer than a write's timeout, so a hanging write has failed. */
const MIN_SETTLE_MS = 2_500;
/** Probe deadline for the settled checks, where a probe that did not answer is asked again. */
const SETTLED_PROBE_TIMEOUT_MS = 5_000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function settled(view: ServiceViewLite | undefined): boolean {
  return (
    view !== undefined &&
    view.status === 'running' &&
    view.instances.length >= 2 &&
    view.instances.filter((i) => i.role === 'primary').length === 1 &&
    view.instances.every((i) => i.state === 'running')
  );
}

function describeView(view: ServiceViewLite | undefined): string {
  if (!view) return 'no view';
  const inst = view.instances
    .map((i) => `${i.id}@${i.cell} ${i.role} ${i.state} e${i.epoch}${i.last_error ? ` (${i.last_error.message})` : ''}`)
    .join('; ');
  return `status ${view.status}${view.message ? ` (${view.message})` : ''}, epoch ${view.epoch}: ${inst}`;
}

/** One run of a seeded schedule. Never throws for a violation; throws only if it cannot start. */
export async function runFaultSchedule(options: CheckerOptions): Promise<CheckerResult> {
  const log = options.log ?? ((line: string) => console.log(line));
  const rng = createPrng(options.seed);
  const gap = options.gapMs ?? [1_000, 4_000];
  const recoveryBound = options.recoveryBoundMs === undefined ? 10_000 : options.recoveryBoundMs;
  const runningWhileFailingBound = options.runningWhileFailingMs ?? RUNNING_WHILE_FAILING_MS;
  const settleTimeout = options.settleTimeoutMs ?? 60_000;
  const probeInterval = options.probeIntervalMs ?? 750;
  const services: FaultService[] = options.engines.map((engine) => ({ name: SERVICE_NAMES[engine], engine }));
  const runId = randomBytes(4).toString('hex');
  const t0 = performance.now();
  const since = (t: number): number => Math.round(t - t0);
  const violations: Violation[] = [];
  const steps: StepRecord[] = [];
  const writers = new Map<string, ServiceWriter>();
  /** Each service's key user: nothing answers without one. */
  const auths = new Map<string, ServiceAuth>();
  const authOf = (service: string): ServiceAuth => {
    const auth = auths.get(service);
    if (!auth) throw new Error(`no service key for ${service}`);
    return auth;
  };
  const views = new Map<string, ServiceViewLite | undefined>();
  /** Every instance address a service ever had: an old primary may linger outside the view. */
  const addresses = new Map<string, Map<string, string>>(services.map((s) => [s.name, new Map()]));
  let step = 0;
  let currentFault = 'setup';
  const openEpisodes = new Set<string>();

  const violate = (invariant: string, service: string | undefined, details: string): void => {
    const v: Violation = {
      seed: options.seed,
      step,
      fault: currentFault,
      invariant,
      service,
      atMs: since(performance.now()),
      details,
    };
    violations.push(v);
    log(
      `VIOLATION seed=${v.seed} step=${v.step} fault=${v.fault} invariant=${invariant}${service ? ` service=${service}` : ''}: ${details}`,
    );
  };
  /** A condition that holds over many probes is one violation per step, not one per probe. */
  const episode = (key: string, holds: boolean, report: () => void): void => {
    const id = `${step}:${key}`;
    if (!holds) {
      openEpisodes.delete(id);
      return;
    }
    if (openEpisodes.has(id)) return;
    openEpisodes.add(id);
    report();
  };

  const mode = options.platformMode ?? 'processes';
  const misfit = options.kinds.filter((k) => !runsOn(k, mode));
  if (misfit.length > 0)
    throw new Error(
      `fault kind(s) ${misfit.map((k) => `${k.name} (${k.platformsReason ?? ''})`).join(', ')} cannot run on platform ${mode}`,
    );
  const platform: FaultPlatformBase =
    mode === 'sf-up'
      ? new SfUpFaultPlatform({ logDir: options.platform?.logDir, logLevel: options.platform?.logLevel })
      : new FaultPlatform({
          partitionableCell: options.kinds.some((k) => k.name === 'cell-partition'),
          ...options.platform,
        });
  const result: CheckerResult = {
    seed: options.seed,
    faults: options.faults,
    engines: [...options.engines],
    kinds: options.kinds.map((k) => k.name),
    startedAt: new Date().toISOString(),
    durationMs: 0,
    acknowledged: {},
    failedWrites: {},
    steps,
    summary: [],
    violations,
  };

  const rememberAddresses = (svc: FaultService, view: ServiceViewLite | undefined): void => {
    for (const i of view?.instances ?? [])
      if (i.host && i.port) addresses.get(svc.name)!.set(`${i.host}:${i.port}`, i.id);
  };

  /** The fencing history entries since a fault, compact, for a violation's details. */
  const fencingSince = async (service: string, at: number): Promise<string> => {
    const wallAt = Date.now() - (performance.now() - at);
    try {
      const res = await platform.api<{ resources: FencingEntryLite[] }>(
        'GET',
        `/v3/service_instances/${service}/fencing`,
      );
      const entries = (res.body.resources ?? []).filter((e) => Date.parse(e.at) >= wallAt - 1_000).reverse();
      if (entries.length === 0) return 'no entries';
      return entries
        .map(
          (e) =>
            `+${Math.round(Date.parse(e.at) - wallAt)}ms ${e.trigger}/${e.step} ${e.outcome} ${e.instance_id ?? ''} ${e.message}`,
        )
        .join(' | ');
    } catch (err) {
      return `history unavailable (${(err as Error).message})`;
    }
  };

  const probeAll = async (svc: FaultService, timeoutMs?: number): Promise<Array<RoleProbe & { instance: string }>> => {
    const known = [...addresses.get(svc.name)!];
    return Promise.all(
      known.map(async ([address, instance]) => {
        const [host, port] = address.split(':');
        return { ...(await probeRole(svc.engine, host, Number(port), authOf(svc.name), timeoutMs)), instance };
      }),
    );
  };

  /** Every volume ever seen on disk: none may disappear during a run (nothing deletes a service). */
  const knownVolumes = new Set<string>();
  const lostVolumes = new Set<string>();
  /** Volumes seen before that are gone now: each is a violation once; returns how many newly went. */
  const checkVolumes = (): number => {
    const now = new Set(platform.volumes());
    const gone = [...knownVolumes].filter((v) => !now.has(v) && !lostVolumes.has(v));
    for (const v of gone) lostVolumes.add(v);
    if (gone.length > 0)
      violate(
        'volume-kept',
        undefined,
        `${gone.length} volume(s) deleted although no service was: ${gone.join(', ')}; on disk now: ${[...now].join(', ')}`,
      );
    for (const v of now) knownVolumes.add(v);
    return gone.length;
  };

  /** instance id -> its cell, from every view seen. */
  const cellOf = new Map<string, string>();
  /** service -> when the monitor last saw its status other than `running`. */
  const lastNotRunningAt = new Map<string, number>();
  let monitoring = true;
  const monitor = async (): Promise<void> => {
    while (monitoring) {
      const started = performance.now();
      let absentAgents = await platform.absentAgents();
      await Promise.all(
        services.map(async (svc) => {
          const view = await platform.service(svc.name);
          if (view) views.set(svc.name, view);
          rememberAddresses(svc, view);
          for (const i of view?.instances ?? []) cellOf.set(i.id, i.cell);
          // Probes of different instances are not one instant: one answered just before a
          // promotion and another just after it look like two primaries that never coexisted. A
          // claim of two is reported only if a second round, started after the first ended, says
          // the same; a real split brain lasts longer than one round trip.
          const classify = (ps: Array<RoleProbe & { instance: string }>) => ({
            // An engine that outlived its agent cannot be demoted by anyone until the agent is
            // back (which then shoots it at once if it was deposed): its claim alone is excused
            // while it could not commit. Were it writable, `one-writable` still counts it.
            primaries: ps.filter(
              (p) => p.primary && (p.acceptsWrites || !absentAgents.has(cellOf.get(p.instance) ?? '')),
            ),
            writable: ps.filter((p) => p.acceptsWrites),
          });
          let probes = await probeAll(svc);
          let { primaries, writable } = classify(probes);
          if (primaries.length > 1 || writable.length > 1) {
            probes = await probeAll(svc);
            // A round of probes takes seconds on a loaded machine: an agent whose registration
            // expired meanwhile (control judged its cell dead and failed over) is as absent for
            // this round as one found absent before it. Both reads count.
            const absentNow = await platform.absentAgents();
            absentAgents = new Set([...absentAgents, ...absentNow]);
            ({ primaries, writable } = classify(probes));
          }
          const describe = (ps: typeof probes): string =>
            ps.map((p) => `${p.instance} ${p.address} [${p.detail}]`).join(', ');
          episode(`one-primary:${svc.name}`, primaries.length > 1, () =>
            violate(
              'one-primary',
              svc.name,
              `${primaries.length} instances claim primary: ${describe(primaries)}; view: ${describeView(view)}`,
            ),
          );
          episode(`one-writable:${svc.name}`, writable.length > 1, () =>
            violate(
              'one-writable',
              svc.name,
              `${writable.length} instances would commit writes: ${describe(writable)}; view: ${describeView(view)}`,
            ),
          );
          const writer = writers.get(svc.name);
          const failingSince = writer?.failingSince();
          // While the router process itself is down or restarting, failed writes say nothing about
          // the service's status (control reports services, not routers): counted from its return.
          const routerBack = platform.routerUpSince();
          // A status that said `starting` or `degraded` while writes failed told the truth: the
          // failure counts from the last time the service was seen not running (the earliest the
          // status can have turned `running`), e.g. a primary started again by `sf up` that
          // reports running a moment before its commit check finds no standby yet.
          if (view && view.status !== 'running') lastNotRunningAt.set(svc.name, started);
          const failingMs =
            failingSince === undefined || routerBack === undefined
              ? 0
              : performance.now() - Math.max(failingSince, routerBack, lastNotRunningAt.get(svc.name) ?? 0);
          episode(
            `running-while-failing:${svc.name}`,
            view?.status === 'running' && failingMs > runningWhileFailingBound,
            () => {
              const last = writer?.failed.at(-1);
              violate(
                'running-means-writable',
                svc.name,
                `status running while writes through the router have failed for ${Math.round(failingMs)} ms (last error: ${last?.error ?? 'write hangs'}); view: ${describeView(view)}`,
              );
            },
          );
        }),
      ).catch((err: unknown) => log(`monitor: ${(err as Error).message}`));
      await platform.refreshEnginePids();
      await sleep(Math.max(50, probeInterval - (performance.now() - started)));
    }
  };

  /** The checks run once the platform has settled after a fault (and at the end). */
  const checkSettled = async (): Promise<void> => {
    for (const svc of services) {
      const view = await platform.service(svc.name);
      const writer = writers.get(svc.name)!;
      // Acknowledged writes: all of them, every time, so a write lost late is still found.
      try {
        const acked = writer.acked.map((a) => a.id);
        // A read-back that cannot connect says nothing about the writes: asked again (a router
        // restarting, a PostgreSQL backend fork at load) before it is reported as a failure.
        const readBack = () => missingWrites(svc.engine, view?.port ?? 0, runId, acked, authOf(svc.name));
        let missing: number[] | undefined;
        for (let attempt = 1; missing === undefined; attempt++) {
          try {
            missing = await readBack();
          } catch (err) {
            if (attempt >= READ_BACK_ATTEMPTS) throw err;
            await sleep(READ_BACK_RETRY_MS);
          }
        }
        if (missing.length > 0) {
          const byId = new Map(writer.acked.map((a) => [a.id, a]));
          const sample = missing
            .slice(0, 5)
            .map((id) => `#${id} acked at ${since(byId.get(id)!.ackedAt)} ms`)
            .join(', ');
          violate(
            'acked-write-lost',
            svc.name,
            `${missing.length} of ${acked.length} acknowledged writes missing (${sample}); view: ${describeView(view)}`,
          );
          // Each lost write is reported once; later checks compare against what remains.
          const lost = new Set(missing);
          const keep = writer.acked.filter((a) => !lost.has(a.id));
          writer.acked.length = 0;
          writer.acked.push(...keep);
        }
      } catch (err) {
        violate(
          'read-back',
          svc.name,
          `could not read the writes back through the router (${READ_BACK_ATTEMPTS} tries): ${(err as Error).message}`,
        );
      }
      // The router's backend is the one instance that claims primary. A probe that could not
      // connect or answer in time (a PostgreSQL backend fork and SCRAM exchange take seconds at
      // load 30+) says nothing: asked again with a longer deadline before anything is judged.
      let probes = await probeAll(svc);
      for (
        let attempt = 0;
        attempt < 2 &&
        probes.some((p) => !p.reachable && view?.instances.some((i) => `${i.host}:${i.port}` === p.address));
        attempt++
      )
        probes = await probeAll(svc, SETTLED_PROBE_TIMEOUT_MS);
      const primaries = probes.filter((p) => p.primary).map((p) => p.address);
      const unreachable = probes.filter((p) => !p.reachable).map((p) => `${p.address} (${p.detail})`);
      const backends = view ? await platform.routerBackends(view.port) : undefined;
      const active = (backends ?? [])
        .filter((b) => b.state === 'active' && b.role === 'primary')
        .map((b) => `${b.host}:${b.port}`);
      if (backends === undefined)
        violate('router-points-at-primary', svc.name, 'the router admin /routes did not answer');
      else if (primaries.length !== 1 || active.length !== 1 || active[0] !== primaries[0])
        violate(
          'router-points-at-primary',
          svc.name,
          `router active primary backend(s) [${active.join(', ')}], instances claiming primary [${primaries.join(', ')}]${unreachable.length ? `, not answering [${unreachable.join(', ')}]` : ''}; view: ${describeView(view)}`,
        );
      // A `running` status means a client arriving now can write.
      if (view?.status === 'running') {
        const error = await probeWrite(svc.engine, view.port, authOf(svc.name));
        if (error)
          violate(
            'running-means-writable',
            svc.name,
            `status running but a fresh write through the router failed: ${error}`,
          );
      }
    }
  };

  try {
    await platform.start();
    log(
      `platform up: control ${platform.controlUrl}, router admin ${platform.routerAdminPort}, cells ${platform.cellNames.join(', ')}`,
    );
    for (const svc of services) {
      const res = await platform.api('POST', '/v3/service_instances', {
        name: svc.name,
        engine: svc.engine,
        replicas: 1,
        durability: 'sync',
        volume: { sizeMb: VOLUME_MB[svc.engine] },
        // Under sf up services require TLS by default (docs/tls.md); the checker's clients (writers
        // through the router, probes on engine ports, a PostgreSQL wire client of its own) speak
        // plaintext, as they do on the processes platform, whose cells have no CA.
        ...(mode === 'sf-up' ? { tls: 'off' } : {}),
      });
      if (res.status !== 201) throw new Error(`creating ${svc.name}: ${res.status} ${JSON.stringify(res.body)}`);
      // A key may be created before the service runs: its user is in the instances' first spec.
      auths.set(svc.name, await platform.serviceKey(svc.name, 'fault-checker'));
    }
    for (const svc of services)
      await platform.waitUntil(`${svc.name} running`, async () => settled(await platform.service(svc.name)), 180_000);
    for (const svc of services) {
      const view = (await platform.service(svc.name))!;
      views.set(svc.name, view);
      rememberAddresses(svc, view);
      writers.set(svc.name, startWriter(svc.engine, svc.name, view.port, runId, authOf(svc.name)));
    }
    await platform.waitUntil(
      'first acknowledged writes',
      async () => [...writers.values()].every((w) => w.acked.length >= 10),
      60_000,
    );
    log(`services running: ${services.map((s) => `${s.name} (${s.engine}) on ${views.get(s.name)?.port}`).join(', ')}`);
    const monitorDone = monitor();

    const faultTimes: number[] = [];
    const firstKinds: FaultKind[] = [];
    if (options.eachKindFirst) {
      const pool = [...options.kinds];
      while (pool.length > 0) firstKinds.push(pool.splice(rng.int(0, pool.length - 1), 1)[0]!);
    }
    for (let i = 1; i <= options.faults; i++) {
      await sleep(rng.int(gap[0], gap[1]));
      const kind = firstKinds[i - 1] ?? rng.pick(options.kinds);
      // A violation found during the gap still belongs to the previous fault; from here on, to this one.
      step = i;
      currentFault = kind.name;
      const epochsBefore = new Map(services.map((s) => [s.name, views.get(s.name)?.epoch]));
      for (const v of platform.volumes()) knownVolumes.add(v);
      let fault: AppliedFault;
      try {
        fault = await kind.apply({ platform, rng, services, step });
      } catch (err) {
        fault = {
          kind: kind.name,
          detail: `the fault itself failed: ${(err as Error).message}`,
          at: performance.now(),
        };
      }
      faultTimes.push(fault.at);
      log(
        `step ${step} at ${since(fault.at)} ms: ${fault.kind}${fault.service ? ` ${fault.service}` : ''}: ${fault.detail}${fault.action ? ` -> exit ${fault.action.code} in ${Math.round(fault.action.ms)} ms` : ''}`,
      );
      const record: StepRecord = {
        step,
        kind: fault.kind,
        service: fault.service,
        target: fault.target,
        detail: fault.detail,
        atMs: since(fault.at),
        action: fault.action,
        recoveryMs: {},
        failedWrites: {},
        settledMs: null,
        volumesDeleted: 0,
        load1: Math.round(loadavg()[0] * 10) / 10,
      };
      steps.push(record);
      for (const p of fault.problems ?? []) violate(p.invariant, fault.service, p.details);
      const accepted = fault.acceptedCodes ?? (fault.expectedCode === undefined ? undefined : [fault.expectedCode]);
      if (fault.action && accepted && !accepted.includes(fault.action.code))
        violate(
          'action-exit-code',
          fault.service,
          `expected exit ${accepted.join(' or ')}, got ${fault.action.code}: ${fault.action.output.slice(-400)}`,
        );

      // Settle: every service running with all its instances.
      // A platform stopped and started on purpose has the settle timeout from the moment it said
      // it was up again (its own start-up is bounded by `sf up`, and reported in the step).
      const deadline = (fault.restartedAt === undefined ? fault.at : performance.now()) + settleTimeout;
      let lastViews = new Map<string, ServiceViewLite | undefined>();
      for (;;) {
        lastViews = new Map(
          await Promise.all(services.map(async (s) => [s.name, await platform.service(s.name)] as const)),
        );
        // A view read right after a fault may not show it yet: settled also needs every writer
        // acknowledged after the fault and not failing now, and enough time for a hanging write to
        // have timed out.
        const writersHealthy = services.every((s) => {
          const w = writers.get(s.name)!;
          return w.firstAckIssuedAfter(fault.at) !== undefined && w.failingSince() === undefined;
        });
        // Every cell agent back and registered: one that is still starting has not yet re-adopted
        // (and, if deposed, shot) the engines it left running.
        if (
          performance.now() - fault.at > MIN_SETTLE_MS &&
          writersHealthy &&
          (await platform.absentAgents()).size === 0 &&
          services.every((s) => settled(lastViews.get(s.name)))
        ) {
          record.settledMs = Math.round(performance.now() - fault.at);
          break;
        }
        if (performance.now() > deadline) break;
        await sleep(200);
      }
      // Recovery: the end of the outage the fault caused, i.e. the first acknowledged write issued
      // after the last failed one (up to the settle point); with no failure, the first write after
      // the fault. Measured from the fault, so an action's own duration counts.
      const windowEnd = performance.now();
      for (const svc of services) {
        const writer = writers.get(svc.name)!;
        const failures = writer.failed.filter((f) => f.at >= fault.at && f.at <= windowEnd);
        const lastFailure = failures.at(-1);
        const from = lastFailure ? lastFailure.at : fault.at;
        // An operator action hits when the platform acts, not when the CLI process was spawned
        // (on a loaded machine node takes seconds to start): its outage starts with the first write
        // it failed, or the action itself when the first failure came before it could act.
        // A fault that stops the platform on purpose is measured from its new start: the time the
        // platform takes to serve again, not the time the operator kept it stopped.
        const hit =
          fault.restartedAt ??
          (fault.action && failures.length > 0 ? Math.max(fault.at, failures[0].at - WRITE_TIMEOUT_MS) : fault.at);
        const waitUntil = Math.max(deadline, windowEnd + 5_000);
        while (!writer.firstAckIssuedAfter(from) && performance.now() < waitUntil) await sleep(20);
        const ack = writer.firstAckIssuedAfter(from);
        const ms = ack ? ack.ackedAt - hit : null;
        record.recoveryMs[svc.name] = ms === null ? null : Math.round(ms);
        const bound = recoveryBound === null ? null : (kind.recoveryBoundMs ?? recoveryBound);
        if (ms === null || (bound !== null && ms > bound))
          violate(
            'write-recovery',
            svc.name,
            `${
              ms === null
                ? `no acknowledged write through the router since ${Math.round(from - fault.at)} ms after the fault`
                : `writes through the router recovered ${Math.round(ms)} ms after the ${fault.restartedAt ? 'new start' : 'fault'} (bound ${bound} ms)`
            }; last error: ${lastFailure?.error ?? '-'}; ${writer.failedBetween(fault.at, windowEnd)} failed writes; ` +
              `fencing: ${await fencingSince(svc.name, fault.at)}; view: ${describeView(lastViews.get(svc.name))}`,
          );
      }
      if (record.settledMs === null) {
        const absent = [...(await platform.absentAgents())];
        if (absent.length > 0)
          violate(
            'settles',
            undefined,
            `cell agent(s) ${absent.join(', ')} not running and registered ${settleTimeout} ms after the fault`,
          );
      }
      if (record.settledMs === null)
        for (const s of services)
          if (!settled(lastViews.get(s.name)))
            violate(
              'settles',
              s.name,
              `not running with all instances ${settleTimeout} ms after the fault: ${describeView(lastViews.get(s.name))}; fencing: ${await fencingSince(s.name, fault.at)}`,
            );
      if (fault.refused) {
        for (const s of services) {
          const failed = writers.get(s.name)!.failedBetween(fault.at, fault.at + (fault.action?.ms ?? 0) + 2_000);
          const epochAfter = lastViews.get(s.name)?.epoch;
          if (s.name === fault.service && (failed > 0 || epochAfter !== epochsBefore.get(s.name)))
            violate(
              'refused-action-harmless',
              s.name,
              `${failed} writes failed during the refused action; epoch ${epochsBefore.get(s.name)} -> ${epochAfter}`,
            );
        }
      }
      record.volumesDeleted = checkVolumes();
      // One line per step, so that a run cut short still says what each fault cost.
      log(
        `step ${step} ${record.kind}: settled ${record.settledMs === null ? 'never' : `after ${record.settledMs} ms`}; recovery ${Object.entries(
          record.recoveryMs,
        )
          .map(([name, ms]) => `${name} ${ms ?? '-'} ms`)
          .join(', ')}; volumes deleted ${record.volumesDeleted}; load ${record.load1}`,
      );
      await checkSettled();
    }
    step = options.faults + 1;
    currentFault = 'final';
    await sleep(1_000);
    checkVolumes();
    await checkSettled();
    monitoring = false;
    await monitorDone;
    for (const w of writers.values()) await w.stop();
    // Failed writes per fault: from this fault to the next one.
    const end = performance.now();
    steps.forEach((s, i) => {
      const from = faultTimes[i];
      const to = faultTimes[i + 1] ?? end;
      for (const [name, w] of writers) s.failedWrites[name] = w.failedBetween(from, to);
    });
  } catch (err) {
    result.aborted = { error: (err as Error).stack ?? String(err), logs: platform.logs() };
    log(`run aborted at step ${step}: ${(err as Error).message}`);
  } finally {
    monitoring = false;
    for (const w of writers.values()) await w.stop().catch(() => undefined);
    await platform.stop().catch((err: unknown) => log(`stopping the platform: ${(err as Error).message}`));
  }
  for (const [name, w] of writers) {
    result.acknowledged[name] = w.acked.length;
    result.failedWrites[name] = w.failed.length;
  }
  result.summary = summarize(steps, violations, services);
  result.durationMs = Math.round(performance.now() - t0);
  return result;
}

export function summarize(
  steps: readonly StepRecord[],
  violations: readonly Violation[],
  services: readonly FaultService[],
): KindSummary[] {
  const rows: KindSummary[] = [];
  const kinds = [...new Set(steps.map((s) => s.kind))].sort();
  for (const kind of kinds) {
    const ofKind = steps.filter((s) => s.kind === kind);
    for (const svc of services) {
      const rec = ofKind.map((s) => s.recoveryMs[svc.name]).filter((v): v is number => typeof v === 'number');
      const failed = ofKind.reduce((n, s) => n + (s.failedWrites[svc.name] ?? 0), 0);
      rows.push({
        kind,
        engine: svc.engine,
        faults: ofKind.length,
        recoveryP50Ms: percentile(rec, 50),
        recoveryP99Ms: percentile(rec, 99),
        recoveryMaxMs: rec.length ? Math.max(...rec) : null,
        failedWrites: failed,
        failedWritesPerFault: ofKind.length ? failed / ofKind.length : 0,
        volumesDeleted: ofKind.reduce((n, s) => n + (s.volumesDeleted ?? 0), 0),
        violations: violations.filter((v) => v.fault === kind && v.service === svc.name).length,
      });
    }
  }
  return rows;
}
