/**
 * Moving an instance's volume to another cell (docs/volumes.md, Moving a volume), in two phases
 * as Flocker does it:
 *
 * 1. while the instance serves, its data directory is copied cell to cell over TCP into the
 *    target's incoming area (two passes: the second sends only what changed during the first);
 * 2. the engine is stopped cleanly (its own durable shutdown: everything it acknowledged is on
 *    its disk), the delta is copied, each file checked against the source's SHA-256 and fsynced
 *    by the receiver; then one guarded commit hands the instance to the target cell — under a new
 *    epoch for a primary, with the lease floor raised first so the source can never serve as
 *    primary again — and the target adopts the copy and starts. Routers follow the route (same
 *    port, new backend, new epoch); replicas are repointed by convergence.
 *
 * The source volume is deleted only once the target serves. A failure before the hand-off
 * restarts the source on its own volume (which nothing touched); a target that does not start
 * after the hand-off gives the instance back to the source, whose data is what was copied.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { ErrorCode, SfError, createRedis, errorMessageOf, isSfError } from '../../common';
import { fenceLease, type CellEvent, type InstanceRole } from '../../protocol';
import { putDesiredOps, removeDesiredOps, sendOrder, type OrderRequest } from '../state/cell-client';
import type { CellDirectory } from './cell-directory';
import { instanceSpec } from './instance-spec';
import type { ServiceStore } from './service-store';
import type { InstanceRecord, ServiceEvent, ServiceRecord } from './service-types';
import { newSnapshotId } from './snapshot-coordinator';
import { DEAD_AFTER_MS, MoveCatchUp, type MoveSwitching } from './volume-move-catch-up';
import { SnapshotRecords } from './snapshot-records';

export type MoveState = 'copying' | 'switching' | 'starting' | 'done' | 'failed';

/**
 * `catch-up`: a new replica on the target filled by the engine's replication, then a role switch
 * (volume-move-catch-up.ts); `copy`: the volume copied cell to cell, the source stopped for the
 * last pass and started on the target (engines without replication, or when asked).
 */
export type MoveMethod = 'catch-up' | 'copy';

/** One step of a move as it happened: where the time of a move (and of its switch) went. */
export interface MoveStep {
  step: string;
  /** When the step started (ms since the epoch). */
  at: number;
  ms: number;
}

export interface MoveRecord {
  id: string;
  service: string;
  instanceId: string;
  role: InstanceRole;
  method: MoveMethod;
  /** The instance on the target cell: a new one for `catch-up`, `instanceId` for `copy`. */
  targetInstanceId: string;
  from: string;
  to: string;
  state: MoveState;
  /** 1: copying while the source serves; 2: the switch (copy: source stopped, delta, hand-off). */
  phase: 1 | 2;
  bytes: number;
  totalBytes: number | null;
  rateBps: number | null;
  etaS: number | null;
  /** From the source's stop to the target running: when writes fail. */
  writeWindowMs: number | null;
  /** The steps done so far, in order (absent in records written before steps were kept). */
  steps?: MoveStep[];
  error: string | null;
  startedAt: number;
  finishedAt: number | null;
  /** The mover running it (one per control process) and when it last said it still does. */
  runner?: string;
  heartbeatAt?: number;
}

export interface MoveView {
  id: string;
  service: string;
  instance: string;
  role: InstanceRole;
  method: MoveMethod;
  target_instance: string;
  from: string;
  to: string;
  state: MoveState;
  phase: 1 | 2;
  bytes: number;
  total_bytes: number | null;
  rate_bps: number | null;
  eta_s: number | null;
  write_window_ms: number | null;
  steps: Array<{ step: string; at: string; duration_ms: number }>;
  error: string | null;
  started_at: string;
  finished_at: string | null;
}

export function moveView(m: MoveRecord): MoveView {
  return {
    id: m.id,
    service: m.service,
    instance: m.instanceId,
    role: m.role,
    method: m.method,
    target_instance: m.targetInstanceId,
    from: m.from,
    to: m.to,
    state: m.state,
    phase: m.phase,
    bytes: m.bytes,
    total_bytes: m.totalBytes,
    rate_bps: m.rateBps,
    eta_s: m.etaS,
    write_window_ms: m.writeWindowMs,
    steps: (m.steps ?? []).map((s) => ({ step: s.step, at: new Date(s.at).toISOString(), duration_ms: s.ms })),
    error: m.error,
    started_at: new Date(m.startedAt).toISOString(),
    finished_at: m.finishedAt ? new Date(m.finishedAt).toISOString() : null,
  };
}

export interface MoveOptions {
  /** How long the target may take to run the instance after the hand-off. @default 120000 */
  startTimeoutMs?: number;
  /** Most copy passes while the source serves (a second only when the first was long). @default 2 */
  livePasses?: number;
  /** A live pass shorter than this is the last one: what changed meanwhile is small. @default 2000 */
  shortPassMs?: number;
  /** How to move; `catch-up` needs an engine with replication. @default catch-up where possible */
  method?: MoveMethod;
}

const COPY_TIMEOUT_MS = 3_600_000;
/**
 * Attempts of one copy pass that the receiving cell reports failed (a cut connection, a source
 * that stopped sending) while it is alive: each resumes from what the receiver verified.
 */
const PASS_ATTEMPTS = 4;
/** Passes that failed on the receiving cell while it lived: resumable. */
const interruptedPasses = new WeakSet<object>();
const SWITCH_ATTEMPTS = 3;

/** How often a running move's record says it is still being run. */
export const MOVE_HEARTBEAT_MS = 5_000;

/**
 * An unfinished move whose runner has not said so for this long was left by a control that
 * stopped (a restart, a crash, a lost lead) and is abandoned (VolumeMover.settle); six beats,
 * so a control starved of CPU for a while is not taken for gone.
 */
export const MOVE_ABANDONED_AFTER_MS = 6 * MOVE_HEARTBEAT_MS;

/** True for a move that is neither done nor failed. */
function unfinished(m: MoveRecord): boolean {
  return m.state !== 'done' && m.state !== 'failed';
}

export class VolumeMover {
  private readonly events: SnapshotRecords;
  private readonly running = new Set<string>();
  /** This process's mover, named in the records of the moves it runs. */
  private readonly runner = randomUUID();
  /** Bytes of the completed passes of each move in progress. */
  private readonly copied = new Map<string, number>();

  constructor(
    private readonly redis: Redis,
    private readonly redisUrl: string,
    private readonly store: ServiceStore,
    private readonly directory: CellDirectory,
    private readonly primaryLeaseTtlMs?: number,
    private readonly switching?: MoveSwitching,
  ) {
    this.events = new SnapshotRecords(redis, store.keys);
  }

  async get(id: string): Promise<MoveRecord | null> {
    const text = await this.redis.hget(this.store.keys.moves, id);
    return text ? this.settle(JSON.parse(text) as MoveRecord) : null;
  }

  async list(service?: string): Promise<MoveRecord[]> {
    const all = Object.values(await this.redis.hgetall(this.store.keys.moves)).map((t) => JSON.parse(t) as MoveRecord);
    const mine = all.filter((m) => !service || m.service === service);
    return (await Promise.all(mine.map((m) => this.settle(m)))).sort((a, b) => b.startedAt - a.startedAt);
  }

  /**
   * A move nobody runs any more, ended as failed: the control that ran it stopped before it
   * finished, and without this its record said `copying` for ever and refused every later move of
   * the service. What a move's own failure would undo is undone: a catch-up's new replica is
   * removed (kept, without its move mark, if a failover made it the primary in the meantime); a
   * copy stopped in its switch before the hand-off has its source started again (as after a
   * failed switch), one after the hand-off stays on the target, where its record puts it. Any
   * control may do it, and doing it twice changes nothing.
   */
  private async settle(m: MoveRecord, now = Date.now()): Promise<MoveRecord> {
    if (!unfinished(m) || this.running.has(m.service)) return m;
    if (now - (m.heartbeatAt ?? m.startedAt) < MOVE_ABANDONED_AFTER_MS) return m;
    const phase = m.phase;
    m.state = 'failed';
    m.finishedAt = now;
    m.error = `abandoned in phase ${phase}: the control running it stopped before it finished`;
    const undo =
      m.method === 'catch-up'
        ? m.targetInstanceId === m.instanceId
          ? Promise.resolve()
          : this.switching
            ? new MoveCatchUp(this.store, this.directory, this.switching, this.primaryLeaseTtlMs).dropTarget(m)
            : Promise.reject(new Error('no control here to remove it'))
        : phase === 2
          ? this.restartSource(m)
          : Promise.resolve();
    await undo.catch((err: unknown) => (m.error += `; undoing it failed: ${errorMessageOf(err)}`));
    await this.save(m);
    await this.event(m, 'volume-move-failed', `move of ${m.instanceId} from ${m.from} to ${m.to} ${m.error}`);
    return m;
  }

  private async save(m: MoveRecord): Promise<void> {
    await this.redis.hset(this.store.keys.moves, m.id, JSON.stringify(m));
  }

  /** Runs one step of a move and keeps when it started and how long it took (also when it failed). */
  private async step<T>(m: MoveRecord, step: string, work: () => Promise<T>): Promise<T> {
    const at = Date.now();
    try {
      return await work();
    } finally {
      (m.steps ??= []).push({ step, at, ms: Date.now() - at });
    }
  }

  private event(m: MoveRecord, type: ServiceEvent['type'], message: string, logged = true): Promise<void> {
    const e = { type, service: m.service, instanceId: m.instanceId, cell: m.to, message };
    if (logged) return this.events.event(e);
    // Progress goes to the live stream only: it would push everything else out of the log.
    return this.redis
      .publish(this.store.keys.serviceEvents, JSON.stringify({ ...e, at: Date.now(), leaderToken: 0 }))
      .then(() => undefined);
  }

  /** Validates the request and starts the move; resolves with its record at once. */
  async start(name: string, to: string, instanceId?: string, options: MoveOptions = {}): Promise<MoveRecord> {
    const service = await this.store.mustGet(name);
    if (service.status === 'deleting')
      throw new SfError(ErrorCode.ActionRefused, `service ${name} is being deleted`, 'name');
    const inst = instanceId
      ? service.instances.find((i) => i.id === instanceId)
      : service.instances.find((i) => i.role === 'primary');
    if (!inst)
      throw new SfError(
        ErrorCode.NotFound,
        instanceId ? `service ${name} has no instance '${instanceId}'` : `service ${name} has no primary`,
        instanceId ? 'instance' : 'name',
      );
    if (inst.fenced) throw new SfError(ErrorCode.ActionRefused, `instance ${inst.id} is fenced`, 'instance');
    // One left by a control that stopped is ended here first (settle), not waited for.
    if (this.running.has(name) || (await this.list(name)).some(unfinished))
      throw new SfError(ErrorCode.ActionRefused, `a move of ${name} is already in progress`, 'name');
    const cells = await this.directory.snapshot();
    const target = cells.get(to);
    if (!target?.alive || !target.record)
      throw new SfError(ErrorCode.InvalidRequest, `to names no live cell: '${to}'`, 'to');
    if (inst.cell === to) throw new SfError(ErrorCode.InvalidRequest, `instance ${inst.id} is already on ${to}`, 'to');
    if (service.instances.some((i) => i.cell === to))
      throw new SfError(ErrorCode.InvalidRequest, `cell ${to} already holds an instance of ${name}`, 'to');
    if (!target.record.engines.includes(service.engine))
      throw new SfError(ErrorCode.InvalidRequest, `cell ${to} does not run engine ${service.engine}`, 'to');
    const method = this.methodFor(service, inst, options.method);
    if (method === 'copy' && !target.record.transfer)
      throw new SfError(ErrorCode.InvalidRequest, `cell ${to} takes no copies`, 'to');
    const source = cells.get(inst.cell);
    const actual = source?.actual.get(inst.id);
    if (!source?.alive || (method === 'copy' && !source.record?.transfer) || actual?.state !== 'running')
      throw new SfError(
        ErrorCode.ActionRefused,
        `instance ${inst.id} is not running on a live cell (cell ${inst.cell} ${source?.alive ? 'alive' : 'not alive'}, instance ${actual?.state ?? 'not reported'})`,
        'instance',
      );
    const move: MoveRecord = {
      id: newSnapshotId(`move-${name}`),
      service: name,
      instanceId: inst.id,
      role: inst.role,
      method,
      targetInstanceId: inst.id,
      from: inst.cell,
      to,
      state: 'copying',
      phase: 1,
      bytes: 0,
      totalBytes: actual.volumeUsedMb ? actual.volumeUsedMb * 1024 * 1024 : null,
      rateBps: null,
      etaS: null,
      writeWindowMs: null,
      steps: [],
      error: null,
      startedAt: Date.now(),
      finishedAt: null,
      runner: this.runner,
      heartbeatAt: Date.now(),
    };
    await this.save(move);
    await this.event(move, 'volume-move-started', `moving ${inst.role} ${inst.id} from ${inst.cell} to ${to}`);
    this.running.add(name);
    // The record is the move's own object: a beat saves its latest state with the time.
    const beat = setInterval(() => {
      if (!unfinished(move)) return;
      move.heartbeatAt = Date.now();
      this.save(move).catch(() => undefined);
    }, MOVE_HEARTBEAT_MS);
    beat.unref();
    void this.run(move, options).finally(() => {
      clearInterval(beat);
      this.running.delete(name);
    });
    return { ...move };
  }

  /**
   * Catch-up wherever the engine replicates (and, for a primary, this control can run the
   * switchover); the copy otherwise. Asking for catch-up where it cannot run is refused.
   */
  private methodFor(service: ServiceRecord, inst: InstanceRecord, asked?: MoveMethod): MoveMethod {
    const replicates = service.engine === 'redis' || service.engine === 'postgres';
    const switchable = inst.role === 'replica' || this.switching?.canSwitch() === true;
    if (asked === 'copy') return 'copy';
    if (replicates && switchable) return 'catch-up';
    if (asked === 'catch-up')
      throw new SfError(
        ErrorCode.InvalidRequest,
        replicates
          ? 'method catch-up moves a primary only on the leading control'
          : `method catch-up needs an engine with replication, not ${service.engine}`,
        'method',
      );
    return 'copy';
  }

  private async order(
    cell: string,
    request: OrderRequest,
    timeoutMs = 60_000,
    signal?: AbortSignal,
    orderId?: string,
  ): Promise<Record<string, unknown>> {
    // An order the cell is still executing (a slow stop or delete on a loaded machine) is waited
    // for, up to twice its bound; one nobody runs (a dead cell) fails at the bound.
    const result = await sendOrder(this.redis, this.store.keys, cell, request, {
      timeoutMs,
      pollMs: 50,
      runningMaxMs: 2 * timeoutMs,
      ...(signal ? { signal } : {}),
      ...(orderId ? { orderId } : {}),
    });
    if (!result.ok)
      throw new SfError(
        ErrorCode.TransferFailed,
        `${request.type} on cell ${cell}: ${result.error?.message ?? 'failed'}`,
      );
    return result.data ?? {};
  }

  /**
   * One copy pass, resumed where it stopped when the receiving cell reports it failed (a dropped
   * connection, a source that sent nothing for its idle bound): the receiver keeps every file it
   * verified and tells the source, which sends only the rest. A dead target is not resumed.
   */
  private async resumingPass(
    m: MoveRecord,
    token: string,
    transfer: { host: string; port: number },
    final: boolean,
  ): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.pass(m, token, transfer, final);
      } catch (err) {
        if (!interruptedPasses.has(err as object) || attempt >= PASS_ATTEMPTS) throw err;
        // What the failed attempt received is on the target (whole files); count it once.
        this.copied.set(m.id, m.bytes);
        (m.steps ??= []).push({ step: 'copy-interrupted', at: Date.now(), ms: 0 });
        await this.event(
          m,
          'volume-move-progress',
          `copy to ${m.to} interrupted (${errorMessageOf(err)}); resuming (attempt ${attempt + 1} of ${PASS_ATTEMPTS})`,
        );
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** One copy pass; fails as soon as the target cell's registration is gone (a dead target). */
  private async pass(
    m: MoveRecord,
    token: string,
    transfer: { host: string; port: number },
    final: boolean,
  ): Promise<void> {
    const before = this.copied.get(m.id) ?? 0;
    // Aborted when the pass ends another way (a dead target): no polling for an hour after it.
    const abandon = new AbortController();
    const orderId = randomUUID();
    const copy = this.order(
      m.to,
      { type: 'import-volume', instanceId: m.instanceId, moveId: m.id, source: transfer, token, final },
      COPY_TIMEOUT_MS,
      abandon.signal,
      orderId,
    ).catch((err: unknown) => {
      // The receiving cell answered that the copy failed: it lives, and kept what it verified.
      if (isSfError(err) && err.code === ErrorCode.TransferFailed) interruptedPasses.add(err);
      throw err;
    });
    let settled = false;
    const watch = (async () => {
      // A loaded cell can miss heartbeats for a second; only a longer silence counts as death.
      // A cell that renews the copy order's running mark is alive and copying, whatever its
      // registration says: on a loaded machine a receiving cell missed heartbeats for seconds
      // and a copy that was progressing was taken for a dead target.
      let missingSince: number | null = null;
      while (!settled) {
        await new Promise((r) => setTimeout(r, 500));
        if (settled) return;
        const present =
          (await this.redis.exists(this.store.keys.cell(m.to).registration)) === 1 ||
          (await this.redis.exists(this.store.keys.orderRunning(orderId))) === 1;
        missingSince = present ? null : (missingSince ?? Date.now());
        if (missingSince !== null && Date.now() - missingSince >= DEAD_AFTER_MS)
          throw new SfError(ErrorCode.TransferFailed, `cell ${m.to} died during the copy`);
      }
    })();
    try {
      const data = await Promise.race([copy, watch]);
      // The pass's own count is exact; progress events in between are samples.
      const copied = before + Number((data as Record<string, unknown> | undefined)?.bytes ?? 0);
      this.copied.set(m.id, copied);
      m.bytes = copied;
      await this.save(m);
    } finally {
      settled = true;
      abandon.abort();
      copy.catch(() => undefined);
      watch.catch(() => undefined);
    }
  }

  /** Follows the target's progress events into the move record and the event stream. */
  private async followProgress(m: MoveRecord): Promise<() => void> {
    const sub = createRedis(this.redisUrl, { connectionName: 'sf-control:move', maxRetriesPerRequest: null });
    sub.on('error', () => undefined);
    let lastBytes = 0;
    let lastAt = Date.now();
    let lastSaved = 0;
    sub.on('message', (_channel: string, text: string) => {
      let e: CellEvent;
      try {
        e = JSON.parse(text) as CellEvent;
      } catch {
        return;
      }
      if (e.type !== 'transfer-progress' || e.id !== m.id) return;
      // Each pass counts from 0: a new pass restarts the rate's reference.
      if (e.bytes < lastBytes) lastBytes = 0;
      const now = Date.now();
      const rate = now > lastAt ? ((e.bytes - lastBytes) * 1000) / (now - lastAt) : 0;
      lastBytes = e.bytes;
      lastAt = now;
      m.bytes = (this.copied.get(m.id) ?? 0) + e.bytes;
      m.rateBps = m.rateBps === null ? rate : Math.round(0.7 * m.rateBps + 0.3 * rate);
      m.etaS =
        m.totalBytes && m.rateBps && m.phase === 1
          ? Math.max(0, Math.round((m.totalBytes - e.bytes) / m.rateBps))
          : null;
      if (now - lastSaved < 500) return;
      lastSaved = now;
      void this.save(m).catch(() => undefined);
      void this.event(
        m,
        'volume-move-progress',
        `${m.instanceId}: ${(m.bytes / 1048576).toFixed(1)} MB copied${m.rateBps ? ` at ${(m.rateBps / 1048576).toFixed(1)} MB/s` : ''}`,
        false,
      ).catch(() => undefined);
    });
    await sub.subscribe(this.store.keys.cellEvents);
    return () => sub.disconnect();
  }

  private async run(m: MoveRecord, options: MoveOptions): Promise<void> {
    if (m.method === 'catch-up' && this.switching) return this.runCatchUp(m, this.switching);
    return this.runCopy(m, options);
  }

  private async runCatchUp(m: MoveRecord, switching: MoveSwitching): Promise<void> {
    const catchUp = new MoveCatchUp(this.store, this.directory, switching, this.primaryLeaseTtlMs);
    try {
      m.totalBytes ??= MoveCatchUp.totalBytes(await this.directory.snapshot(), m.from, m.instanceId);
      m.targetInstanceId = await this.step(m, 'place', () => catchUp.addTarget(m));
      await this.save(m);
      await this.event(
        m,
        'volume-move-progress',
        `${m.targetInstanceId} placed on ${m.to}, catching up with the primary`,
      );
      await this.step(m, 'catch-up', () => catchUp.awaitCaughtUp(m, COPY_TIMEOUT_MS, () => this.progress(m)));
      await this.step(m, 'measure', () => this.measureTarget(m));
      if (m.role === 'primary') {
        m.phase = 2;
        m.state = 'switching';
        await this.save(m);
        m.writeWindowMs = await this.step(m, 'switchover', () => this.switchWithRetries(m, catchUp));
      } else m.writeWindowMs = 0;
      await catchUp.removeSource(m);
      // Stopped first: a cell deletes no volume under a running engine. The removed desired
      // spec stops it too; the order only makes it happen now.
      await this.step(m, 'stop-source', () =>
        this.order(m.from, { type: 'stop', instanceId: m.instanceId }, 60_000).catch(() => undefined),
      );
      await this.step(m, 'delete-source', () =>
        this.order(m.from, { type: 'delete-volume', instanceId: m.instanceId }, 120_000).catch(async (err) => {
          await catchUp.tombstoneSource(m).catch(() => undefined);
          await this.event(
            m,
            'volume-move-failed',
            `source volume of ${m.instanceId} on ${m.from} not deleted yet (${errorMessageOf(err)}); it is deleted once the cell can`,
          );
        }),
      );
      await this.finish(m);
    } catch (err) {
      m.error = errorMessageOf(err);
      m.state = 'failed';
      m.finishedAt = Date.now();
      try {
        await catchUp.dropTarget(m);
      } catch (dropErr) {
        m.error += `; removing ${m.targetInstanceId} failed: ${errorMessageOf(dropErr)}`;
      }
      await this.save(m).catch(() => undefined);
      await this.event(
        m,
        'volume-move-failed',
        `move of ${m.instanceId} to ${m.to} failed, ${m.from} keeps serving: ${m.error}`,
      ).catch(() => undefined);
    }
  }

  /**
   * The switchover, tried again when it was refused before anything stopped (a position that
   * could not be read in time, a catch-up that took too long on a loaded machine): the switchover
   * undid itself, the source serves again, and the replica is caught up anew first.
   */
  private async switchWithRetries(m: MoveRecord, catchUp: MoveCatchUp): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const t0 = Date.now();
      try {
        const { windowMs } = await catchUp.switchover(m);
        return windowMs ?? Date.now() - t0;
      } catch (err) {
        // Each of these is refused before anything was stopped or promoted: "not the leader"
        // before the first step (a control on a loaded machine can miss a lease renewal and
        // take the lead back a moment later), the others undone by the switchover itself.
        const retriable =
          isSfError(err) &&
          (err.code === ErrorCode.OrderFailed ||
            err.code === ErrorCode.CatchUpTimeout ||
            err.code === ErrorCode.NotLeader);
        if (!retriable || attempt >= SWITCH_ATTEMPTS) throw err;
        if (isSfError(err) && err.code === ErrorCode.NotLeader) await new Promise((r) => setTimeout(r, 2_000));
        await this.event(
          m,
          'volume-move-progress',
          `switch to ${m.targetInstanceId} refused (${errorMessageOf(err)}); trying again`,
        );
        await catchUp.awaitCaughtUp(m, COPY_TIMEOUT_MS, () => this.progress(m));
      }
    }
  }

  /**
   * What the caught-up replica holds, measured now: the samples taken while it caught up come
   * from the cell's periodic measurement (every 15 s), which a short move can miss entirely.
   * Without an answer the last sample stays.
   */
  private async measureTarget(m: MoveRecord): Promise<void> {
    const data = await this.order(m.to, { type: 'measure-volume', instanceId: m.targetInstanceId }, 30_000).catch(
      () => null,
    );
    if (typeof data?.bytes !== 'number') return;
    m.bytes = data.bytes;
    await this.save(m);
  }

  private async progress(m: MoveRecord): Promise<void> {
    await this.save(m);
    await this.event(
      m,
      'volume-move-progress',
      `${m.targetInstanceId}: ${(m.bytes / 1048576).toFixed(1)} MB on ${m.to}${m.rateBps ? ` at ${(m.rateBps / 1048576).toFixed(1)} MB/s` : ''}`,
      false,
    );
  }

  private async finish(m: MoveRecord): Promise<void> {
    m.state = 'done';
    m.phase = 2;
    m.etaS = 0;
    m.finishedAt = Date.now();
    await this.save(m);
    await this.event(
      m,
      'volume-moved',
      `${m.role} ${m.instanceId} moved from ${m.from} to ${m.to}${m.targetInstanceId !== m.instanceId ? ` as ${m.targetInstanceId}` : ''}: ${(m.bytes / 1048576).toFixed(1)} MB, writes refused for ${m.writeWindowMs} ms`,
    );
  }

  private async runCopy(m: MoveRecord, options: MoveOptions): Promise<void> {
    const stopFollowing = await this.followProgress(m).catch(() => () => undefined);
    let sourceStopped = false;
    let handedOff = false;
    try {
      const cells = await this.directory.snapshot();
      const transfer = cells.get(m.from)?.record?.transfer;
      if (!transfer) throw new SfError(ErrorCode.TransferFailed, `cell ${m.from} takes no copies`);
      const token = randomBytes(24).toString('hex');
      await this.step(m, 'export', () =>
        this.order(m.from, { type: 'export-volume', instanceId: m.instanceId, token, ttlMs: COPY_TIMEOUT_MS }),
      );
      // A second live pass only when the first was long: after a short one little has changed,
      // and the final pass (writes stopped) sends that little anyway.
      for (let k = 0; k < (options.livePasses ?? 2); k++) {
        const t0 = Date.now();
        await this.step(m, `live-pass-${k + 1}`, () => this.resumingPass(m, token, transfer, false));
        if (Date.now() - t0 < (options.shortPassMs ?? 2_000)) break;
      }

      m.phase = 2;
      m.state = 'switching';
      await this.save(m);
      const stoppedAt = Date.now();
      await this.step(m, 'stop-source', () => this.order(m.from, { type: 'stop', instanceId: m.instanceId }, 60_000));
      sourceStopped = true;
      await this.step(m, 'final-pass', () => this.resumingPass(m, token, transfer, true));

      const service = await this.store.mustGet(m.service);
      const newEpoch = m.role === 'primary' ? service.epoch + 1 : undefined;
      // No lease may be renewed below the new epoch: the stopped source can never serve as
      // primary again, whatever happens to this control from here on.
      if (newEpoch !== undefined)
        await this.step(m, 'lease-floor', () => fenceLease(this.redis, this.store.keys, m.instanceId, newEpoch));
      const zone = cells.get(m.to)?.record?.zone ?? '';
      await this.step(m, 'hand-off', () =>
        this.handOff(m, (rec, inst) => {
          inst.cell = m.to;
          inst.zone = zone;
          inst.moveIn = { moveId: m.id };
          if (newEpoch !== undefined) {
            inst.epoch = newEpoch;
            rec.epoch = newEpoch;
          }
        }),
      );
      handedOff = true;
      m.state = 'starting';
      await this.save(m);
      await this.step(m, 'start-target', () => this.waitRunning(m, options.startTimeoutMs ?? 120_000));
      m.writeWindowMs = Date.now() - stoppedAt;
      // The target serves: only now is the source's copy deleted.
      await this.step(m, 'delete-source', () =>
        this.order(m.from, { type: 'delete-volume', instanceId: m.instanceId }, 120_000).catch(async (err) => {
          await this.event(
            m,
            'volume-move-failed',
            `source volume of ${m.instanceId} on ${m.from} not deleted: ${errorMessageOf(err)}`,
          );
        }),
      );
      await this.finish(m);
    } catch (err) {
      m.error = errorMessageOf(err);
      m.state = 'failed';
      m.finishedAt = Date.now();
      try {
        if (handedOff) await this.handBack(m);
        else if (sourceStopped) await this.restartSource(m);
      } catch (rollbackErr) {
        m.error += `; giving the instance back to ${m.from} failed: ${errorMessageOf(rollbackErr)}`;
      }
      await this.save(m).catch(() => undefined);
      await this.event(
        m,
        'volume-move-failed',
        `move of ${m.instanceId} to ${m.to} failed, ${m.from} keeps serving: ${m.error}`,
      ).catch(() => undefined);
    } finally {
      stopFollowing();
      this.copied.delete(m.id);
    }
  }

  /** One guarded commit: the instance's record changes and its desired spec moves cells. */
  private async handOff(m: MoveRecord, change: (rec: ServiceRecord, inst: InstanceRecord) => void): Promise<void> {
    await this.store.change(m.service, null, async (current) => {
      const rec = current;
      const inst = rec?.instances.find((i) => i.id === m.instanceId);
      if (!rec || !inst || inst.cell !== m.from || rec.status === 'deleting')
        throw new SfError(ErrorCode.ActionRefused, `${m.instanceId} changed during the move`);
      change(rec, inst);
      inst.generation += 1;
      inst.specWritten = true;
      rec.updatedAt = Date.now();
      return {
        change: {
          record: rec,
          extraOps: this.desiredMoveOps(rec, inst, m.from, m.to),
        },
        result: undefined,
      };
    });
  }

  private async waitRunning(m: MoveRecord, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const rec = await this.store.mustGet(m.service);
      const inst = rec.instances.find((i) => i.id === m.instanceId);
      const json = await this.redis.hget(this.store.keys.cell(m.to).actual, m.instanceId);
      const actual = json
        ? (JSON.parse(json) as { state: string; generation: number; lastError?: { message: string } | null })
        : null;
      if (inst && actual && actual.generation >= inst.generation) {
        if (actual.state === 'running') return;
        if (actual.state === 'failed')
          throw new SfError(
            ErrorCode.TransferFailed,
            `${m.instanceId} failed to start on ${m.to}: ${actual.lastError?.message ?? ''}`,
          );
      }
      if (Date.now() > deadline)
        throw new SfError(ErrorCode.Timeout, `${m.instanceId} did not run on ${m.to} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Phase 2 failed before the hand-off: the source starts again on its untouched volume. */
  private async restartSource(m: MoveRecord): Promise<void> {
    await this.store.change(m.service, null, async (rec) => {
      const inst = rec?.instances.find((i) => i.id === m.instanceId);
      if (!rec || !inst || inst.cell !== m.from) return { done: undefined };
      inst.generation += 1;
      rec.updatedAt = Date.now();
      return {
        change: {
          record: rec,
          extraOps: putDesiredOps(
            this.store.keys,
            m.from,
            instanceSpec(rec, inst, inst.role === 'replica' ? (inst.upstream ?? null) : null, this.primaryLeaseTtlMs),
          ),
        },
        result: undefined,
      };
    });
  }

  /** The target did not start: the source volume (the copy's origin) serves again, new epoch kept. */
  private async handBack(m: MoveRecord): Promise<void> {
    const zone = (await this.directory.snapshot()).get(m.from)?.record?.zone ?? '';
    await this.store.change(m.service, null, async (rec) => {
      const inst = rec?.instances.find((i) => i.id === m.instanceId);
      if (!rec || !inst || inst.cell !== m.to) return { done: undefined };
      inst.cell = m.from;
      inst.zone = zone;
      delete inst.moveIn;
      inst.generation += 1;
      rec.updatedAt = Date.now();
      return {
        change: {
          record: rec,
          extraOps: this.desiredMoveOps(rec, inst, m.to, m.from),
        },
        result: undefined,
      };
    });
  }

  /** The store ops that take an instance's desired spec off one cell and give it to another. */
  private desiredMoveOps(rec: ServiceRecord, inst: InstanceRecord, off: string, onto: string) {
    const upstream = inst.role === 'replica' ? (inst.upstream ?? null) : null;
    return [
      ...removeDesiredOps(this.store.keys, off, inst.id),
      ...putDesiredOps(this.store.keys, onto, instanceSpec(rec, inst, upstream, this.primaryLeaseTtlMs)),
    ];
  }
}
