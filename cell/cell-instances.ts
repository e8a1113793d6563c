/**
 * The cell's model of its instances: what control wants (desired specs), what runs (executor
 * handles), what is on disk (volumes), and the `ActualInstance` report built from all three.
 * `reconcile` converges running instances to the desired specs with one rule control relies on:
 * an instance is started only for a generation not yet attempted, so a crash is reported and
 * never retried here ("restarts nothing on its own initiative").
 */
import type { KeyLayout, ActualInstance, ActualState, ExecutorKind, InstanceSpec } from '../protocol';
import type { HeartbeatPrimary } from '../protocol';
import type { Redis } from 'ioredis';
import type { Engine } from './engine';
import type { EngineRegistry } from './engine-registry';
import { ErrorCode, SfError, errorCodeOf, errorMessageOf } from '../common';
import type { Executor, InstanceHandle, InstanceStatus } from './executor';
import { listVolumes, readMeta, volumePaths, writeMeta } from './instance-volume';
import { LeaseKeeper } from './lease-keeper';
import { isFull, measureDirBytes, toMb } from './volume-meter';
import type { SnapshotStore } from './snapshot-store';
import { adoptIncoming } from './volume-incoming';
import { withMonitoringUser } from './engine-credentials';

export interface CellInstancesOptions {
  cell: string;
  dataDir: string;
  advertiseHost: string;
  executors: Partial<Record<ExecutorKind, Executor>>;
  engines: EngineRegistry;
  /** Used for leases; undefined = no leases kept. */
  redis: Redis | undefined;
  /** The installation's key layout (leases and epoch floors). */
  keys: KeyLayout;
  /** The agent's life, as its registration's `startedAt` says: lease claims carry it. @default 0 */
  boot?: number;
  /** Whether the cell's registration (its lease for all its primaries) is current. @default () => true */
  cellLeaseCurrent?: () => boolean;
  /** Called with every changed report (null = forgotten). */
  report: (instanceId: string, actual: ActualInstance | null) => void;
  /** @default 'process' */
  defaultExecutor?: ExecutorKind;
  /**
   * Bound of the commit check on running primaries (a write that must commit, with sync
   * durability acknowledged by a standby); past it the primary is reported `degraded`. @default 2000
   */
  commitCheckTimeoutMs?: number;
  /** Told of each certificate an engine loaded while running, or failed to (docs/tls.md). */
  onTlsRefresh?: (instanceId: string, error: string | null) => void;
  /** Where `restoreFrom` specs find their snapshot; absent = restores fail. */
  snapshots?: SnapshotStore;
}

/** Default of `CellInstancesOptions.commitCheckTimeoutMs`. */
export const DEFAULT_COMMIT_CHECK_TIMEOUT_MS = 2_000;

interface LocalInstance {
  spec: InstanceSpec;
  executor: Executor;
  state: ActualState;
  handle: InstanceHandle | undefined;
  lastError: { code: string; message: string } | null;
  position: string | null;
  positionValue: string | null;
  streaming?: boolean | null;
  healthy: boolean | null;
  lease: LeaseKeeper | undefined;
  /** Set while the cell itself stops or kills it, so the exit is not reported as a failure. */
  expectingExit: 'stop' | 'fence' | undefined;
  desired: boolean;
  /** Generation of the last start attempt; -1 after a deliberate stop (re-adding restarts). */
  attempted: number;
  /** Version of the credentials last applied to the running engine; -1 = none yet. */
  credentialsApplied: number;
  /** Measured disk usage of the volume (MiB); null until measured. */
  usedMb: number | null;
  /** Usage reached the volume's size; the engine is told to refuse writes. */
  full: boolean;
}

/** Read through a function so the compiler does not narrow a state that changes across awaits. */
function fencedMeanwhile(inst: LocalInstance): boolean {
  return inst.state === 'fenced';
}

export class CellInstances {
  private readonly local = new Map<string, LocalInstance>();
  /** instanceId -> why the running primary cannot commit, from the last commit check. */
  private readonly cannotCommit = new Map<string, string>();
  /** Commit checks in flight, so a hanging one is never started twice. */
  private readonly checking = new Set<string>();
  private readonly refreshing = new Set<string>();
  private readonly unsubscribe: Array<() => void> = [];
  /** The credentials change running per instance, so changes apply one after the other. */
  private readonly credentialSyncs = new Map<string, Promise<void>>();

  constructor(private readonly options: CellInstancesOptions) {
    for (const executor of Object.values(options.executors)) {
      if (executor) this.unsubscribe.push(executor.onExit((id, status) => this.onExit(id, status)));
    }
  }

  /** Re-adopts running instances and learns every volume on disk, so none is lost on restart. */
  async load(): Promise<void> {
    for (const executor of Object.values(this.options.executors)) {
      if (!executor) continue;
      for (const handle of await executor.adopt().catch(() => [])) {
        const meta = await readMeta(volumePaths(this.options.dataDir, handle.instanceId));
        if (!meta) continue;
        const inst = this.ensure(meta.spec, executor, meta.generation);
        inst.handle = handle;
        inst.state = 'running';
        inst.healthy = null;
        // It ran because control wanted it; if the desired hash no longer lists it, stop it.
        inst.desired = true;
        await this.adoptRole(inst, meta.highestEpoch);
      }
    }
    for (const { meta } of await listVolumes(this.options.dataDir)) {
      if (this.local.has(meta.instanceId)) continue;
      const executor = this.executorFor(meta.spec);
      if (!executor) continue;
      const inst = this.ensure(meta.spec, executor, meta.generation);
      inst.state = meta.generation >= 0 ? 'failed' : 'stopped';
      if (meta.generation >= 0) {
        // It was meant to run but is not: it died while no cell watched it. Control decides.
        inst.lastError = {
          code: ErrorCode.InstanceExited,
          message: 'not running when the cell started; not restarted until control raises the generation',
        };
      }
    }
    for (const id of this.local.keys()) this.emit(id);
  }

  /**
   * An engine found running when the agent starts may have been deposed while no agent watched
   * it: control judged the cell dead, promoted a replica and raised this instance's epoch floor.
   * Unless the engine says it is a replica (an engine too busy to answer may have been promoted
   * after its volume record was written), the floor decides: below it, it is shot at once, before
   * the cell registers, so it neither claims to be a writer until control's next pass reaches
   * it nor is adopted as one. A primary the floor allows keeps its lease like one started here.
   * If the floor cannot be read, the engine is left as found: control's reconciler still sees it.
   */
  private async adoptRole(inst: LocalInstance, recordedEpoch: number): Promise<void> {
    const { redis } = this.options;
    if (!inst.handle || !redis) return;
    const id = inst.spec.instanceId;
    const engine = this.options.engines[inst.spec.engine];
    const role = await engine
      .position(inst.handle.context)
      .then((p) => p?.role)
      .catch(() => undefined);
    if (role === 'replica') return;
    const epoch = Math.max(inst.spec.epoch, recordedEpoch);
    let floor: number;
    try {
      floor = Number((await redis.get(this.options.keys.leaseFloor(id))) ?? 0);
    } catch {
      return;
    }
    if (epoch >= floor) {
      if ((role ?? inst.spec.role) !== 'primary') return;
      inst.spec = { ...inst.spec, role: 'primary', epoch };
      inst.handle.context = { ...inst.handle.context, spec: inst.spec };
      this.syncLease(inst);
      return;
    }
    await this.fence(id);
    inst.lastError = {
      code: ErrorCode.StaleEpoch,
      message: `found running as primary with epoch ${epoch} when the cell started, but control fenced it at epoch ${floor}: stopped`,
    };
  }

  /**
   * Measures every volume (`du`) and, where one crossed its size either way, tells its running
   * engine to refuse writes or accept them again (docs/volumes.md). Other volumes are untouched.
   */
  async measureVolumes(): Promise<void> {
    for (const id of [...this.local.keys()]) await this.measureVolume(id).catch(() => null);
  }

  /**
   * Measures one instance's volume now and applies the result as the periodic round does;
   * resolves with its bytes (`measure-volume` order).
   */
  async measureVolume(id: string): Promise<number> {
    const inst = this.local.get(id);
    if (!inst) throw new SfError(ErrorCode.InstanceNotFound, `no instance ${id} on this cell`, 'instanceId');
    const bytes = await measureDirBytes(volumePaths(this.options.dataDir, id).volumeDir);
    const usedMb = toMb(bytes);
    const full = isFull(usedMb, inst.spec.volume.sizeMb);
    const changed = usedMb !== inst.usedMb || full !== inst.full;
    inst.usedMb = usedMb;
    if (full !== inst.full) {
      inst.full = full;
      await this.applySettings(inst).catch(() => undefined);
    }
    if (changed) this.emit(id);
    return bytes;
  }

  /** Measured usage of every volume on the cell (MiB); undefined before the first measurement. */
  diskUsedMb(): number | undefined {
    const measured = [...this.local.values()].filter((i) => i.usedMb !== null);
    if (measured.length === 0) return undefined;
    return measured.reduce((sum, i) => sum + (i.usedMb ?? 0), 0);
  }

  /** Instances whose volume is full. */
  fullVolumes(): string[] {
    return [...this.local.values()].filter((i) => i.full).map((i) => i.spec.instanceId);
  }

  /** Pushes disk sync and the volume's fullness to the running engine (no restart). */
  private async applySettings(inst: LocalInstance): Promise<void> {
    const engine = this.options.engines[inst.spec.engine];
    if (!inst.handle || inst.state !== 'running' || !engine.applySettings) return;
    inst.handle.context = { ...inst.handle.context, spec: inst.spec, volumeFull: inst.full };
    await engine.applySettings(inst.handle.context);
  }

  /** Sum of volume sizes on this cell, desired or merely present on disk. */
  usedMb(): number {
    let sum = 0;
    for (const inst of this.local.values()) sum += inst.spec.volume.sizeMb;
    return sum;
  }

  count(): number {
    return this.local.size;
  }

  /** instanceId -> state, for the start-up log line. */
  summary(): Record<string, string> {
    return Object.fromEntries(
      [...this.local].map(([id, inst]) => [id, `${inst.state}${inst.handle ? ` pid ${inst.handle.pid}` : ''}`]),
    );
  }

  ids(): string[] {
    return [...this.local.keys()];
  }

  async reconcile(desiredSpecs: Map<string, InstanceSpec>): Promise<void> {
    const starts: Array<Promise<void>> = [];
    for (const [id, desired] of desiredSpecs) {
      const spec = completeSpec(desired);
      const executor = this.executorFor(spec);
      const inst = this.local.get(id);
      if (!executor) {
        this.fail(
          id,
          spec,
          new SfError(
            ErrorCode.ExecutorUnavailable,
            `executor ${spec.executor} is not available on cell ${this.options.cell}`,
          ),
        );
        continue;
      }
      if (!inst) {
        const fresh = this.ensure(spec, executor, Number.NEGATIVE_INFINITY);
        fresh.desired = true;
        starts.push(this.start(fresh));
        continue;
      }
      inst.desired = true;
      if (inst.state === 'running' && spec.generation > inst.attempted && inst.attempted >= 0) {
        // A generation counts start requests: a higher one on a running instance restarts it.
        starts.push(this.stop(id, false).then(() => this.startWith(inst, spec)));
        continue;
      }
      if (inst.state === 'running' || inst.state === 'starting') {
        starts.push(this.applyLiveChanges(inst, spec));
        continue;
      }
      if (inst.state === 'stopping') continue;
      inst.spec = spec;
      if (spec.generation > inst.attempted) starts.push(this.start(inst));
    }
    for (const [id, inst] of this.local) {
      if (desiredSpecs.has(id)) continue;
      inst.desired = false;
      // One still starting is stopped by `start` once it is up.
      if (inst.state === 'running') starts.push(this.stop(id));
    }
    await Promise.all(starts);
  }

  /** Role/epoch/replicaOf changes on a running instance never restart it; orders change roles. */
  private async applyLiveChanges(inst: LocalInstance, spec: InstanceSpec): Promise<void> {
    const epoch = Math.max(inst.spec.epoch, spec.epoch);
    const raised = epoch > inst.spec.epoch;
    // Also a set not yet applied in this cell's life (an adopted instance): applying is idempotent,
    // and it is how a service from before monitoring users gets one (and its exporters).
    const newCredentials =
      (spec.credentials?.version ?? -1) > Math.min(inst.spec.credentials?.version ?? -1, inst.credentialsApplied);
    const newDiskSync = spec.diskSync !== inst.spec.diskSync;
    // A TLS policy change (docs/tls.md): the engine loads the other certificate by reload.
    const newTls =
      (spec.tls ?? false) !== (inst.spec.tls ?? false) ||
      (spec.tlsOptional ?? false) !== (inst.spec.tlsOptional ?? false) ||
      JSON.stringify(spec.tlsCertificate ?? null) !== JSON.stringify(inst.spec.tlsCertificate ?? null);
    inst.spec = {
      ...spec,
      role: inst.spec.role,
      replicaOf: inst.spec.replicaOf,
      epoch,
      port: inst.handle?.port ?? spec.port,
    };
    if (inst.handle) inst.handle.context = { ...inst.handle.context, spec: inst.spec };
    if (inst.lease) inst.lease.setEpoch(epoch);
    if (newCredentials && inst.state === 'running') await this.syncCredentials(inst).catch(() => undefined);
    if (newDiskSync) await this.applySettings(inst).catch((err: unknown) => this.noteError(inst, err));
    if (newTls && inst.state === 'running' && inst.handle) {
      // Reported after the reload, so the route re-encrypts only to an engine that presents the
      // certificate it verifies.
      await this.refreshTls(inst, this.options.engines[spec.engine], inst.handle.context);
      this.emit(inst.spec.instanceId);
    }
    if (!raised) return;
    await this.persistEpoch(inst.spec.instanceId, epoch);
    this.emit(inst.spec.instanceId);
  }

  private async persistEpoch(instanceId: string, epoch: number): Promise<void> {
    const paths = volumePaths(this.options.dataDir, instanceId);
    const meta = await readMeta(paths);
    if (meta && epoch > meta.highestEpoch) await writeMeta(paths, { ...meta, highestEpoch: epoch });
  }

  private startWith(inst: LocalInstance, spec: InstanceSpec): Promise<void> {
    inst.spec = spec;
    return this.start(inst);
  }

  private async start(inst: LocalInstance): Promise<void> {
    const id = inst.spec.instanceId;
    inst.attempted = inst.spec.generation;
    inst.credentialsApplied = -1;
    inst.state = 'starting';
    inst.lastError = null;
    this.emit(id);
    try {
      await this.checkEpochFloor(inst.spec);
      if (inst.spec.restoreFrom) {
        if (!this.options.snapshots)
          throw new SfError(ErrorCode.SnapshotFailed, `cell ${this.options.cell} has no snapshot store`, 'restoreFrom');
        await this.options.snapshots.materialize(
          inst.spec.restoreFrom.snapshotId,
          volumePaths(this.options.dataDir, id),
          inst.spec.engine,
        );
      }
      if (inst.spec.moveIn)
        await adoptIncoming(this.options.dataDir, inst.spec.moveIn.moveId, volumePaths(this.options.dataDir, id));
      const handle = await inst.executor.start(inst.spec);
      if (fencedMeanwhile(inst)) {
        // A fence order arrived while it was starting (e.g. during a base backup): it must not
        // come up now.
        inst.expectingExit = 'fence';
        await inst.executor.kill(id);
      } else {
        inst.handle = handle;
        if (inst.spec.role === 'primary') this.presumeUncommitted(inst);
        inst.state = 'running';
        inst.healthy = true;
        inst.spec = { ...inst.spec, port: handle.port };
        // The handle was made from the spec as it was when the start began; a credentials order
        // or spec change that arrived meanwhile is in inst.spec only, and the engine's users are
        // synced from the handle's spec just below (a key created during the start was lost).
        handle.context = { ...handle.context, spec: inst.spec };
        this.syncLease(inst);
        await this.refreshPosition(id).catch(() => undefined);
        if (inst.spec.role === 'primary') void this.checkCommit(inst);
        // Keys created or revoked while it was down (PostgreSQL roles live in the primary's data).
        await this.syncCredentials(inst).catch(() => undefined);
        // A volume found full before this start: the configuration was rendered without knowing.
        if (inst.full) await this.applySettings(inst).catch(() => undefined);
        if (!inst.desired) {
          // Removed from desired state while it was starting.
          await this.persistGeneration(id, inst.attempted);
          return this.stop(id);
        }
      }
    } catch (err) {
      if (!fencedMeanwhile(inst)) {
        inst.state = 'failed';
        inst.handle = undefined;
        inst.lastError = { code: errorCodeOf(err), message: errorMessageOf(err) };
      }
    }
    await this.persistGeneration(id, inst.attempted);
    this.emit(id);
  }

  /**
   * The volume record only knows epochs this cell saw. When control fenced the instance it raised
   * the instance's epoch floor in Redis (lease-keeper.ts `fenceLease`), so a primary start is
   * also checked against that; if Redis cannot answer, the start is refused (fail closed).
   */
  async checkEpochFloor(spec: Pick<InstanceSpec, 'role' | 'instanceId' | 'epoch'>): Promise<void> {
    if (spec.role !== 'primary' || !this.options.redis) return;
    const floor = Number((await this.options.redis.get(this.options.keys.leaseFloor(spec.instanceId))) ?? 0);
    if (spec.epoch < floor) {
      throw new SfError(
        ErrorCode.StaleEpoch,
        `instance ${spec.instanceId}: refusing to start as primary with epoch ${spec.epoch}, control fenced it at epoch ${floor}`,
        'epoch',
      );
    }
  }

  private async persistGeneration(instanceId: string, generation: number): Promise<void> {
    const paths = volumePaths(this.options.dataDir, instanceId);
    const meta = await readMeta(paths);
    if (meta) await writeMeta(paths, { ...meta, generation });
  }

  /** Clean stop; `deliberate` marks it as wanted off (re-adding the spec starts it again). */
  async stop(instanceId: string, deliberate = true): Promise<void> {
    const inst = this.local.get(instanceId);
    if (!inst || !inst.handle) return;
    inst.expectingExit = 'stop';
    inst.state = 'stopping';
    this.emit(instanceId);
    this.dropLease(inst);
    await inst.executor.stop(instanceId);
    inst.state = 'stopped';
    inst.handle = undefined;
    inst.healthy = null;
    if (deliberate) {
      inst.attempted = -1;
      await this.persistGeneration(instanceId, -1);
    }
    this.emit(instanceId);
  }

  /**
   * Where the instance's last clean stop left its data, for engines that can tell; null when it
   * cannot be told (the engine cannot, the stop was not clean, the instance is unknown).
   */
  async stoppedPosition(instanceId: string): Promise<{ position: string; positionValue: string } | null> {
    const inst = this.local.get(instanceId);
    const engine = inst ? this.options.engines[inst.spec.engine] : undefined;
    if (!engine?.stoppedPosition) return null;
    const pos = await engine.stoppedPosition(volumePaths(this.options.dataDir, instanceId).dataDir).catch(() => null);
    return pos ? { position: pos.position, positionValue: pos.value } : null;
  }

  /** The fencing shot: SIGKILL. Returns whether it was running. */
  async fence(instanceId: string): Promise<boolean> {
    const inst = this.local.get(instanceId);
    if (!inst) throw new SfError(ErrorCode.InstanceNotFound, `no instance ${instanceId} on cell ${this.options.cell}`);
    this.dropLease(inst);
    const wasRunning = inst.executor.status(instanceId).state === 'running';
    // Only a live process produces the exit this flag swallows; set on a dead one it would hide
    // the next real crash after a restart.
    inst.expectingExit = wasRunning ? 'fence' : undefined;
    await inst.executor.kill(instanceId);
    inst.state = 'fenced';
    inst.handle = undefined;
    inst.healthy = null;
    this.emit(instanceId);
    return wasRunning;
  }

  /** The engine's user of a running instance, owner of what its helpers write. */
  ownerOf(instanceId: string): { uid: number; gid: number } | undefined {
    const inst = this.local.get(instanceId);
    if (!inst) return undefined;
    return inst.handle?.context.tools?.owner ?? this.options.engines[inst.spec.engine].runAs();
  }

  running(instanceId: string): { handle: InstanceHandle; engine: Engine } {
    const inst = this.local.get(instanceId);
    if (!inst || !inst.handle || inst.state !== 'running') {
      throw new SfError(
        ErrorCode.InstanceNotFound,
        `instance ${instanceId} is not running on cell ${this.options.cell}`,
      );
    }
    return { handle: inst.handle, engine: this.options.engines[inst.spec.engine] };
  }

  requireStopped(instanceId: string): void {
    const inst = this.local.get(instanceId);
    if (!inst) throw new SfError(ErrorCode.InstanceNotFound, `no instance ${instanceId} on cell ${this.options.cell}`);
    if (inst.state === 'running' || inst.state === 'starting' || inst.state === 'stopping') {
      throw new SfError(ErrorCode.InstanceRunning, `instance ${instanceId} is ${inst.state}; stop it first`);
    }
  }

  isRunning(instanceId: string): boolean {
    return this.local.get(instanceId)?.state === 'running';
  }

  isDesired(instanceId: string): boolean {
    return this.local.get(instanceId)?.desired ?? false;
  }

  async recordedEpoch(instanceId: string): Promise<number> {
    return (await readMeta(volumePaths(this.options.dataDir, instanceId)))?.highestEpoch ?? 0;
  }

  /**
   * The `credentials` order: makes the instance's users those of `credentials` unless it already
   * has a newer or equal set applied. Throws when the running engine refuses them.
   */
  async applyCredentials(instanceId: string, credentials: NonNullable<InstanceSpec['credentials']>): Promise<number> {
    const inst = this.local.get(instanceId);
    if (!inst) throw new SfError(ErrorCode.InstanceNotFound, `no instance ${instanceId} on cell ${this.options.cell}`);
    if (credentials.version > (inst.spec.credentials?.version ?? -1)) {
      inst.spec = { ...inst.spec, credentials: withMonitoringUser(credentials) };
      if (inst.handle) inst.handle.context = { ...inst.handle.context, spec: inst.spec };
    }
    if (inst.state === 'running') await this.syncCredentials(inst);
    return inst.spec.credentials?.version ?? -1;
  }

  /**
   * One change at a time per instance: the order and the desired spec carry the same set and
   * arrive together, and two concurrent passes would both create the same user.
   */
  private syncCredentials(inst: LocalInstance): Promise<void> {
    const id = inst.spec.instanceId;
    const run = async (): Promise<void> => {
      const version = inst.spec.credentials?.version ?? -1;
      const engine = this.options.engines[inst.spec.engine];
      if (!inst.handle || version <= inst.credentialsApplied || !engine.applyCredentials) return;
      await engine.applyCredentials(inst.handle.context);
      inst.credentialsApplied = version;
      await this.ensureSidecars(inst);
    };
    const next = (this.credentialSyncs.get(id) ?? Promise.resolve()).catch(() => undefined).then(run);
    this.credentialSyncs.set(id, next);
    return next;
  }

  /**
   * Sidecars of the spec that do not run yet: an exporter left out at the start because its
   * monitoring user did not exist starts once the user does.
   */
  private async ensureSidecars(inst: LocalInstance): Promise<void> {
    const wanted = inst.spec.sidecars ?? [];
    const handle = inst.handle;
    if (!handle || !inst.executor.ensureSidecars) return;
    if (wanted.every((kind) => handle.sidecars?.some((s) => s.kind === kind))) return;
    handle.sidecars = await inst.executor.ensureSidecars(inst.spec.instanceId);
    this.emit(inst.spec.instanceId);
  }

  /** Applies a role change done by an order (promote, repoint) to the model and the lease. */
  update(instanceId: string, patch: Partial<Pick<InstanceSpec, 'role' | 'epoch' | 'replicaOf'>>): void {
    const inst = this.local.get(instanceId);
    if (!inst) return;
    const promoted = patch.role === 'primary' && inst.spec.role !== 'primary';
    inst.spec = { ...inst.spec, ...patch };
    if (inst.handle) inst.handle.context = { ...inst.handle.context, spec: inst.spec };
    if (promoted) this.presumeUncommitted(inst);
    this.syncLease(inst);
    this.emit(instanceId);
    if (promoted) void this.checkCommit(inst);
  }

  /**
   * A primary that has not yet passed a commit check is not reported able to commit: right after
   * a promotion with sync durability it has no standby until the old primary rejoins, and a
   * report without a verdict would read as `running` while every write waits. The first check
   * (started at once) replaces this with its own verdict.
   */
  private presumeUncommitted(inst: LocalInstance): void {
    if (!this.options.engines[inst.spec.engine].checkCommit) return;
    this.cannotCommit.set(inst.spec.instanceId, 'no write has committed on it as primary yet (commit check under way)');
  }

  async refreshPosition(
    instanceId: string,
  ): Promise<{ role: string; position: string | null; positionValue: string | null }> {
    const { handle, engine } = this.running(instanceId);
    const inst = this.local.get(instanceId) as LocalInstance;
    const pos = await engine.position(handle.context);
    inst.position = pos?.position ?? null;
    inst.positionValue = pos?.value ?? null;
    inst.streaming = pos?.streaming ?? null;
    this.emit(instanceId);
    return { role: pos?.role ?? inst.spec.role, position: inst.position, positionValue: inst.positionValue };
  }

  /** Health and position of every running instance; reports only what changed. */
  async probe(): Promise<void> {
    await Promise.all(
      [...this.local.values()]
        .filter((inst) => inst.state === 'running' && inst.handle)
        .map(async (inst) => {
          const id = inst.spec.instanceId;
          const engine = this.options.engines[inst.spec.engine];
          const context = (inst.handle as InstanceHandle).context;
          const healthy = await engine.healthy(context).catch(() => false);
          const pos = healthy ? await engine.position(context).catch(() => null) : null;
          const changed =
            healthy !== inst.healthy ||
            (pos && (pos.value !== inst.positionValue || (pos.streaming ?? null) !== (inst.streaming ?? null)));
          inst.healthy = healthy;
          if (pos) {
            inst.position = pos.position;
            inst.positionValue = pos.value;
            inst.streaming = pos.streaming ?? null;
          }
          if (changed) this.emit(id);
          if (healthy && inst.spec.role === 'primary') void this.checkCommit(inst);
          if (healthy && engine.refreshTls) void this.refreshTls(inst, engine, context);
        }),
    );
  }

  /**
   * Status tells the truth: a primary that answers PING or `select 1` may still be
   * unable to commit (sync standby missing, connections exhausted). The engine's commit check
   * performs a write within a bound; its verdict is reported as `degraded` and never touches the
   * lease, so a primary waiting for its standby is reported, not fenced.
   */
  private async checkCommit(inst: LocalInstance): Promise<void> {
    const id = inst.spec.instanceId;
    const engine = this.options.engines[inst.spec.engine];
    if (!engine.checkCommit || !inst.handle || this.checking.has(id)) return;
    this.checking.add(id);
    try {
      const timeout = this.options.commitCheckTimeoutMs ?? DEFAULT_COMMIT_CHECK_TIMEOUT_MS;
      const reason = await engine
        .checkCommit(inst.handle.context, timeout)
        .catch((err: unknown) => errorMessageOf(err));
      const before = this.cannotCommit.get(id) ?? null;
      if (reason) this.cannotCommit.set(id, reason);
      else this.cannotCommit.delete(id);
      if (reason !== before) this.emit(id);
    } finally {
      this.checking.delete(id);
    }
  }

  /**
   * Loads a renewed certificate into a running engine (one refresh per instance at a time); a
   * failure is told and tried again at the next probe, the engine keeping what it serves.
   */
  private async refreshTls(inst: LocalInstance, engine: Engine, context: InstanceHandle['context']): Promise<void> {
    const id = inst.spec.instanceId;
    if (!engine.refreshTls || this.refreshing.has(id)) return;
    this.refreshing.add(id);
    try {
      if (await engine.refreshTls(context)) {
        this.options.onTlsRefresh?.(id, null);
        // What the cell reports (`tls`) may have changed with the certificate.
        this.emit(id);
      }
    } catch (err) {
      this.options.onTlsRefresh?.(id, errorMessageOf(err));
    } finally {
      this.refreshing.delete(id);
    }
  }

  async forget(instanceId: string): Promise<void> {
    const inst = this.local.get(instanceId);
    if (inst) this.dropLease(inst);
    this.local.delete(instanceId);
    this.options.report(instanceId, null);
  }

  /** Stops lease renewal everywhere; with `stopInstances` also stops the engines. */
  async shutdown(stopInstances: boolean): Promise<void> {
    // Claims of engines left running stay: the registration's expiry voids them, and the next
    // agent re-claims what it adopts.
    for (const inst of this.local.values()) this.dropLease(inst, stopInstances);
    if (stopInstances) await Promise.all([...this.local.keys()].map((id) => this.stop(id)));
    for (const off of this.unsubscribe) off();
  }

  actual(instanceId: string): ActualInstance | null {
    const inst = this.local.get(instanceId);
    if (!inst) return null;
    const { spec } = inst;
    return {
      instanceId,
      service: spec.service,
      engine: spec.engine,
      executor: inst.executor.kind,
      state: inst.state,
      generation: inst.attempted < 0 ? spec.generation : Math.max(inst.attempted, 0),
      pid: inst.handle?.pid ?? null,
      host: this.options.advertiseHost,
      port: inst.handle?.port ?? spec.port ?? null,
      role: spec.role,
      epoch: spec.epoch,
      position: inst.position,
      positionValue: inst.positionValue,
      streaming: inst.state === 'running' && spec.role === 'replica' ? (inst.streaming ?? null) : null,
      healthy: inst.state === 'running' ? inst.healthy : null,
      leaseHeld: inst.lease ? inst.lease.held : null,
      volumePresent: true,
      volumeSizeMb: spec.volume.sizeMb,
      volumeUsedMb: inst.usedMb,
      volumePath: volumePaths(this.options.dataDir, instanceId).volumeDir,
      volumeFull: inst.full,
      lastError: inst.lastError,
      degraded:
        inst.state === 'running' && spec.role === 'primary' ? (this.cannotCommit.get(instanceId) ?? null) : null,
      ...(inst.state === 'running' && inst.handle?.sidecars?.length ? { sidecars: inst.handle.sidecars } : {}),
      ...(this.options.engines[spec.engine].servesTls?.(spec) ? { tls: true } : {}),
      updatedAt: Date.now(),
    };
  }

  reportAll(): void {
    for (const id of this.local.keys()) this.emit(id);
  }

  private emit(instanceId: string): void {
    this.options.report(instanceId, this.actual(instanceId));
  }

  private ensure(spec: InstanceSpec, executor: Executor, attempted: number): LocalInstance {
    let inst = this.local.get(spec.instanceId);
    if (!inst) {
      inst = {
        spec,
        executor,
        state: 'stopped',
        handle: undefined,
        lastError: null,
        position: null,
        positionValue: null,
        healthy: null,
        lease: undefined,
        expectingExit: undefined,
        desired: false,
        attempted,
        credentialsApplied: -1,
        usedMb: null,
        full: false,
      };
      this.local.set(spec.instanceId, inst);
    }
    return inst;
  }

  private executorFor(spec: InstanceSpec): Executor | undefined {
    return this.options.executors[spec.executor ?? this.options.defaultExecutor ?? 'process'];
  }

  /** A live change the engine refused: reported, the instance keeps running as it was. */
  private noteError(inst: LocalInstance, err: unknown): void {
    inst.lastError = { code: errorCodeOf(err), message: errorMessageOf(err) };
    this.emit(inst.spec.instanceId);
  }

  private fail(id: string, spec: InstanceSpec, err: SfError): void {
    const inst = this.local.get(id);
    if (inst && inst.lastError?.code === err.code && inst.state === 'failed') return;
    const executor = this.options.executors.process ?? Object.values(this.options.executors)[0];
    if (!executor) return;
    const target = this.ensure(spec, executor, spec.generation);
    target.state = 'failed';
    target.lastError = { code: err.code, message: err.message };
    this.emit(id);
  }

  private onExit(instanceId: string, status: InstanceStatus): void {
    const inst = this.local.get(instanceId);
    if (!inst || inst.state === 'starting') return;
    const expected = inst.expectingExit;
    inst.expectingExit = undefined;
    if (expected) return;
    this.dropLease(inst);
    inst.state = 'failed';
    inst.handle = undefined;
    inst.healthy = null;
    const why = status.signal ? `signal ${status.signal}` : `exit code ${status.exitCode}`;
    inst.lastError = {
      code: ErrorCode.InstanceExited,
      message: `instance exited (${why}); not restarted until control raises the generation`,
    };
    this.emit(instanceId);
  }

  /** A running primary with `spec.lease` keeps a lease; anything else holds none. */
  private syncLease(inst: LocalInstance): void {
    const wants =
      inst.state === 'running' &&
      inst.spec.role === 'primary' &&
      inst.spec.lease !== undefined &&
      this.options.redis !== undefined;
    if (!wants) return this.dropLease(inst);
    if (inst.lease) return inst.lease.setEpoch(inst.spec.epoch);
    const id = inst.spec.instanceId;
    const lease = new LeaseKeeper({
      keys: this.options.keys,
      redis: this.options.redis as Redis,
      instanceId: id,
      holder: this.options.cell,
      boot: this.options.boot ?? 0,
      cellLeaseCurrent: this.options.cellLeaseCurrent,
      epoch: inst.spec.epoch,
      ttlMs: inst.spec.lease?.ttlMs,
      healthy: async () => {
        const current = this.local.get(id);
        if (!current?.handle) return false;
        return this.options.engines[current.spec.engine].healthy(current.handle.context);
      },
    });
    lease.on('acquired', () => this.emit(id));
    lease.on('lost', () => this.emit(id));
    lease.on('refused', (why: { epoch?: number; afterGap?: boolean }) => {
      // Refused with a higher epoch after the cell was cut off from the store (its heartbeats had
      // a gap, or the claim had not been held for a whole TTL), as in a partition: control judged
      // the cell dead and fenced this primary meanwhile. Shot at once, as a restarted agent does
      // (adoptRole), instead of serving as primary until control's fence order reaches it (found
      // by the fault checker's cell-partition runs). A planned switchover raises the floor while
      // the claim is held and stops the old primary cleanly itself.
      const ttl = inst.spec.lease?.ttlMs ?? 3_000;
      const cutOff = why.afterGap === true || Date.now() - lease.heldAt > ttl;
      if ((why.epoch ?? 0) > lease.epoch && cutOff) void this.shootDeposed(id, why.epoch ?? 0);
    });
    inst.lease = lease;
    lease.start();
  }

  /** The running primaries that hold (or claim) a lease, with their epochs: what a heartbeat checks. */
  leasedPrimaries(): HeartbeatPrimary[] {
    return [...this.local.values()]
      .filter((i) => i.state === 'running' && i.spec.role === 'primary' && i.spec.lease !== undefined)
      .map((i) => ({ instanceId: i.spec.instanceId, epoch: i.spec.epoch }));
  }

  /**
   * Shoots primaries that control fenced at a higher epoch while the cell was cut off (the
   * heartbeat found them before re-registering), and returns once they are stopped.
   */
  async shootFencedWhileAway(deposed: ReadonlyArray<{ instanceId: string; floor: number }>): Promise<void> {
    await Promise.all(deposed.map((d) => this.shootDeposed(d.instanceId, d.floor)));
  }

  /** After a gap in the cell's heartbeats: every claim is checked against the store now. */
  verifyLeases(): void {
    for (const inst of this.local.values()) if (inst.lease) void inst.lease.verify();
  }

  /** After the store lost its state: every claim is written again at its keeper's next look. */
  reclaimLeases(): void {
    for (const inst of this.local.values()) inst.lease?.reclaim();
  }

  private async shootDeposed(id: string, floor: number): Promise<void> {
    const inst = this.local.get(id);
    if (!inst || inst.state !== 'running' || inst.spec.role !== 'primary') return;
    const epoch = inst.spec.epoch;
    await this.fence(id).catch(() => undefined);
    if (!fencedMeanwhile(inst)) return;
    inst.lastError = {
      code: ErrorCode.StaleEpoch,
      message: `primary with epoch ${epoch} could not renew its lease for a whole TTL, and control fenced it at epoch ${floor} meanwhile: stopped`,
    };
    this.emit(id);
  }

  private dropLease(inst: LocalInstance, release = true): void {
    if (release) void inst.lease?.release().catch(() => undefined);
    inst.lease?.stop();
    inst.lease?.removeAllListeners();
    inst.lease = undefined;
  }
}

/** The spec as the cell runs it: credentials from before monitoring users get one. */
function completeSpec(spec: InstanceSpec): InstanceSpec {
  return spec.credentials ? { ...spec, credentials: withMonitoringUser(spec.credentials) } : spec;
}
