/**
 * The `Executor` interface: how a cell runs an instance. `process` (executor-process.ts, the
 * default) runs engines as child processes; `docker` (executor-docker.ts) runs them as containers
 * through the Docker Engine API. Both honour the same contract:
 *
 * - `start` is idempotent for a running instance, creates the volume on first use, refuses a
 *   primary with a stale epoch (instance-volume.ts) and resolves once the engine answers health
 *   checks, or rejects (and leaves nothing running) when it does not;
 * - nothing is ever restarted by the executor: an exit is reported through `onExit`, and what
 *   happens next is control's decision;
 * - `kill` is the fencing shot (SIGKILL): immediate, no shutdown hooks;
 * - the spec's sidecars (sidecar.ts) start once the engine answers and stop when it ends,
 *   however it ends.
 */
import type { ExecutorKind, InstanceSpec, SidecarActual } from '../protocol';
import type { Availability, EngineContext } from './engine';

export interface InstanceHandle {
  instanceId: string;
  executor: ExecutorKind;
  pid: number;
  port: number;
  /** Address others use to reach it. */
  host: string;
  volumeDir: string;
  dataDir: string;
  startedAt: number;
  /** Found running when the cell started (not a child of this cell process). */
  adopted: boolean;
  /** What the engine needs for health, replication position, promote and repoint. */
  context: EngineContext;
  /** The sidecars running beside it (its pod), started after the engine answered. */
  sidecars?: SidecarActual[];
}

export interface InstanceStatus {
  state: 'running' | 'exited' | 'unknown';
  pid: number | null;
  exitCode: number | null;
  signal: string | null;
}

export interface StopOptions {
  /** Grace period before SIGKILL. @default 15000 */
  timeoutMs?: number;
}

export type ExitListener = (instanceId: string, status: InstanceStatus) => void;

export interface Executor {
  readonly kind: ExecutorKind;
  available(): Promise<Availability>;
  start(spec: InstanceSpec): Promise<InstanceHandle>;
  /** Clean shutdown with the engine's own signal; SIGKILL after the grace period. */
  stop(instanceId: string, options?: StopOptions): Promise<void>;
  kill(instanceId: string): Promise<void>;
  status(instanceId: string): InstanceStatus;
  handle(instanceId: string): InstanceHandle | undefined;
  handles(): InstanceHandle[];
  /** Finds instances still running from a previous life of the cell and tracks them again. */
  adopt(): Promise<InstanceHandle[]>;
  onExit(listener: ExitListener): () => void;
  /**
   * Starts the sidecars of the running instance's spec (its handle's context) that do not run,
   * e.g. an exporter left out at the start for want of a monitoring user; returns all of them.
   */
  ensureSidecars?(instanceId: string): Promise<SidecarActual[]>;
}

/**
 * An executor's `start`: the handle of an instance already running, or the one attempt in flight
 * (concurrent starts of one instance share it), or a new attempt by `begin`.
 */
export function startOnce(
  spec: InstanceSpec,
  running: { handle: InstanceHandle; status: InstanceStatus } | undefined,
  starting: Map<string, Promise<InstanceHandle>>,
  begin: (spec: InstanceSpec) => Promise<InstanceHandle>,
): Promise<InstanceHandle> {
  if (running && running.status.state === 'running') return Promise.resolve(running.handle);
  let attempt = starting.get(spec.instanceId);
  if (!attempt) {
    attempt = begin(spec).finally(() => starting.delete(spec.instanceId));
    starting.set(spec.instanceId, attempt);
  }
  return attempt;
}

/** What both executors keep per instance that the status queries read. */
export interface TrackedInstance {
  handle: InstanceHandle;
  status: InstanceStatus;
}

/** `Executor.status`, `handle` and `handles` over the instances an executor tracks. */
export abstract class InstanceTracker<T extends TrackedInstance> {
  protected readonly tracked = new Map<string, T>();

  status(instanceId: string): InstanceStatus {
    return this.tracked.get(instanceId)?.status ?? { state: 'unknown', pid: null, exitCode: null, signal: null };
  }

  handle(instanceId: string): InstanceHandle | undefined {
    const t = this.tracked.get(instanceId);
    return t && t.status.state === 'running' ? t.handle : undefined;
  }

  handles(): InstanceHandle[] {
    return [...this.tracked.values()].filter((t) => t.status.state === 'running').map((t) => t.handle);
  }
}
