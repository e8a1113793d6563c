/**
 * The default executor: each instance is a child process in its own process group, with its
 * volume under the cell's data directory and a port from the cell's range.
 *
 * Instances are spawned detached on purpose: a cell agent restart (upgrade, crash) must not take
 * the databases down with it. The restarted cell re-adopts them from their volume records
 * (`adopt`). Fencing kills the whole process group, so no PostgreSQL backend outlives its
 * postmaster and keeps serving a connected client.
 */
import type { ChildProcess } from 'node:child_process';
import { chmod, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { InstanceSpec, SidecarActual as SidecarHandle } from '../protocol';
import type { Availability, Engine, EngineContext } from './engine';
import type { EngineTlsFiles } from './engine-tls';
import type { RunAs } from './run-command';
import { createEngineRegistry, type EngineRegistry } from './engine-registry';
import { ErrorCode, SfError, withDefaults } from '../common';
import {
  startOnce,
  InstanceTracker,
  type ExitListener,
  type Executor,
  type InstanceHandle,
  type InstanceStatus,
  type StopOptions,
} from './executor';
import {
  admitStart,
  INSTANCES_DIR,
  listVolumes,
  readMeta,
  secureVolume,
  volumePaths,
  writeMeta,
} from './instance-volume';
import { alive, signalGroup, spawnDetached } from './process-group';
import { DEFAULT_PORT_RANGE, PortAllocator, type PortRange } from './port-allocator';
import { ProcessSidecars } from './sidecar-process';

export interface ProcessExecutorOptions {
  /** The cell's data directory; volumes live in `{dataDir}/instances/{instanceId}`. */
  dataDir: string;
  /** @default 20000-20999 */
  portRange?: PortRange;
  /** Address instances bind to. @default '127.0.0.1' */
  listenHost?: string;
  /** Address reported to control for routers and replicas. @default listenHost */
  advertiseHost?: string;
  /** @default createEngineRegistry() */
  engines?: EngineRegistry;
  /** The cell's certificate (docs/tls.md): sidecars serve HTTPS with it to clients with a certificate. */
  tls?: EngineTlsFiles;
  /** How long an engine may take to answer its first health check. @default 120000 */
  startTimeoutMs?: number;
  /** @default 15000 */
  stopTimeoutMs?: number;
  /** @default 100 */
  healthIntervalMs?: number;
  /** How often adopted (non-child) processes are checked for exit. @default 1000 */
  adoptedPollMs?: number;
}

export const DEFAULT_PROCESS_EXECUTOR_OPTIONS = {
  portRange: DEFAULT_PORT_RANGE,
  listenHost: '127.0.0.1',
  startTimeoutMs: 120_000,
  stopTimeoutMs: 15_000,
  healthIntervalMs: 100,
  adoptedPollMs: 1_000,
} as const;

interface Tracked {
  handle: InstanceHandle;
  engine: Engine;
  stopSignal: NodeJS.Signals;
  child: ChildProcess | undefined;
  status: InstanceStatus;
  exited: Promise<InstanceStatus>;
  markExited: (status: InstanceStatus) => void;
  poll: NodeJS.Timeout | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The engine's user, or none when it cannot be had (the sidecars of an adopted engine then run as the cell). */
function engineOwner(engine: Engine): RunAs | undefined {
  try {
    return engine.runAs();
  } catch {
    return undefined;
  }
}

async function logTail(file: string, bytes = 1200): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.slice(-bytes).trim().split('\n').slice(-6).join(' | ');
  } catch {
    return '';
  }
}

export class ProcessExecutor extends InstanceTracker<Tracked> implements Executor {
  readonly kind = 'process' as const;
  private readonly opts: Required<Omit<ProcessExecutorOptions, 'advertiseHost'>> & { advertiseHost: string };
  private readonly ports: PortAllocator;
  private readonly starting = new Map<string, Promise<InstanceHandle>>();
  private readonly listeners = new Set<ExitListener>();
  private readonly sidecars: ProcessSidecars;

  constructor(options: ProcessExecutorOptions) {
    super();
    const listenHost = options.listenHost ?? DEFAULT_PROCESS_EXECUTOR_OPTIONS.listenHost;
    this.opts = withDefaults(
      { ...DEFAULT_PROCESS_EXECUTOR_OPTIONS, engines: options.engines ?? createEngineRegistry() },
      {
        ...options,
        dataDir: path.resolve(options.dataDir),
        listenHost,
        advertiseHost: options.advertiseHost ?? listenHost,
      },
    ) as ProcessExecutor['opts'];
    this.ports = new PortAllocator(this.opts.portRange, listenHost);
    this.sidecars = new ProcessSidecars({ ports: this.ports, listenHost, tls: options.tls });
  }

  async available(): Promise<Availability> {
    return { ok: true, reason: '' };
  }

  start(spec: InstanceSpec): Promise<InstanceHandle> {
    return startOnce(spec, this.tracked.get(spec.instanceId), this.starting, (s) => this.doStart(s));
  }

  private async doStart(spec: InstanceSpec): Promise<InstanceHandle> {
    const engine = this.opts.engines[spec.engine];
    const availability = await engine.available();
    if (!availability.ok) throw new SfError(ErrorCode.EngineUnavailable, availability.reason);

    const previous = await readMeta(volumePaths(this.opts.dataDir, spec.instanceId));
    let port: number;
    if (spec.port) {
      this.ports.reserve(spec.port);
      port = spec.port;
    } else {
      port = await this.ports.allocate(previous?.port);
    }
    try {
      const { paths, meta } = await admitStart(this.opts.dataDir, spec, this.kind, port);
      const runAs = engine.runAs();
      if (runAs) await this.openPathFor(runAs, paths.volumeDir);
      await secureVolume(paths, runAs, false);
      const context: EngineContext = {
        spec,
        dataDir: paths.dataDir,
        volumeDir: paths.volumeDir,
        port,
        listenHost: this.opts.listenHost,
        advertiseHost: this.opts.advertiseHost,
      };
      await engine.prepare(context);
      // Whatever prepare wrote as the cell (configuration, credentials) becomes the engine's own.
      await secureVolume(paths, runAs, true);
      const launch = await engine.launch(context);
      const user = launch.runAs ?? runAs;
      // Built from the spec alone: the cell's environment holds the platform's secrets.
      const child = await spawnDetached({
        file: launch.file,
        args: launch.args,
        logFile: paths.logFile,
        env: launch.env ?? {},
        user,
        home: paths.dataDir,
      });
      const tracked = this.track(
        {
          instanceId: spec.instanceId,
          executor: this.kind,
          pid: child.pid ?? -1,
          port,
          host: this.opts.advertiseHost,
          volumeDir: paths.volumeDir,
          dataDir: paths.dataDir,
          startedAt: Date.now(),
          adopted: false,
          context,
        },
        engine,
        launch.stopSignal,
        child,
      );
      await writeMeta(paths, { ...meta, pid: child.pid ?? null, port });
      await this.waitHealthy(tracked, paths.logFile);
      await this.startSidecars(tracked, user, previous?.sidecars ?? []);
      return tracked.handle;
    } catch (err) {
      this.ports.release(port);
      throw err;
    }
  }

  async ensureSidecars(instanceId: string): Promise<SidecarHandle[]> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return [];
    await this.startSidecars(t, engineOwner(this.opts.engines[t.handle.context.spec.engine]), t.handle.sidecars ?? []);
    return t.handle.sidecars ?? [];
  }

  /** The pod's sidecars, once the engine answers; recorded on the volume for a restarted cell. */
  private async startSidecars(tracked: Tracked, owner: RunAs | undefined, previous: SidecarHandle[]): Promise<void> {
    const { context, instanceId } = tracked.handle;
    if (!context.spec.sidecars?.length) return;
    tracked.handle.sidecars = await this.sidecars.start(context, owner, previous);
    // Ended while its sidecars started: they end with it.
    if (tracked.status.state === 'exited') return this.sidecars.stop(instanceId);
    const paths = volumePaths(this.opts.dataDir, instanceId);
    const meta = await readMeta(paths);
    if (meta) await writeMeta(paths, { ...meta, sidecars: tracked.handle.sidecars });
  }

  /**
   * The engine's user must be able to walk down to its data directory. Directories the cell owns
   * (its data dir and below) get the search bit; an ancestor above them that shuts the user out
   * (typically /root, 0700) is an error naming it, since widening it is not the cell's call.
   */
  private async openPathFor(runAs: RunAs, volumeDir: string): Promise<void> {
    for (const dir of [this.opts.dataDir, path.join(this.opts.dataDir, INSTANCES_DIR), volumeDir]) {
      const mode = (await stat(dir)).mode & 0o777;
      await chmod(dir, mode | 0o011);
    }
    for (let dir = path.dirname(this.opts.dataDir); ; dir = path.dirname(dir)) {
      const st = await stat(dir);
      const searchable =
        st.uid === runAs.uid ? st.mode & 0o100 : st.gid === runAs.gid ? st.mode & 0o010 : st.mode & 0o001;
      if (!searchable) {
        throw new SfError(
          ErrorCode.EngineUnavailable,
          `user ${runAs.user} cannot reach ${this.opts.dataDir}: ${dir} is not searchable for it; choose a data dir outside it (e.g. /var/lib/service-foundry)`,
        );
      }
      if (dir === path.dirname(dir)) break;
    }
  }

  private async waitHealthy(tracked: Tracked, logFile: string): Promise<void> {
    const deadline = Date.now() + this.opts.startTimeoutMs;
    for (;;) {
      if (tracked.status.state === 'exited') {
        this.tracked.delete(tracked.handle.instanceId);
        const why = tracked.status.signal ? `signal ${tracked.status.signal}` : `code ${tracked.status.exitCode}`;
        throw new SfError(
          ErrorCode.InstanceExited,
          `instance ${tracked.handle.instanceId} exited during start (${why}): ${await logTail(logFile)}`,
        );
      }
      if (await tracked.engine.healthy(tracked.handle.context)) return;
      if (Date.now() > deadline) {
        signalGroup(tracked.handle.pid, 'SIGKILL');
        await tracked.exited;
        this.tracked.delete(tracked.handle.instanceId);
        throw new SfError(
          ErrorCode.StartTimeout,
          `instance ${tracked.handle.instanceId} not healthy after ${this.opts.startTimeoutMs} ms: ${await logTail(logFile)}`,
        );
      }
      await sleep(this.opts.healthIntervalMs);
    }
  }

  private track(
    handle: InstanceHandle,
    engine: Engine,
    stopSignal: NodeJS.Signals,
    child: ChildProcess | undefined,
  ): Tracked {
    let markExited!: (status: InstanceStatus) => void;
    const exited = new Promise<InstanceStatus>((resolve) => (markExited = resolve));
    const tracked: Tracked = {
      handle,
      engine,
      stopSignal,
      child,
      status: { state: 'running', pid: handle.pid, exitCode: null, signal: null },
      exited,
      markExited: () => undefined,
      poll: undefined,
    };
    tracked.markExited = (status) => {
      if (tracked.status.state === 'exited') return;
      tracked.status = status;
      if (tracked.poll) clearInterval(tracked.poll);
      this.ports.release(handle.port);
      // The pod ends with its engine, however the engine ended.
      void this.sidecars.stop(handle.instanceId);
      markExited(status);
      for (const listener of this.listeners) listener(handle.instanceId, status);
    };
    if (child) {
      child.once('exit', (code, signal) =>
        tracked.markExited({ state: 'exited', pid: handle.pid, exitCode: code, signal }),
      );
      child.once('error', () => tracked.markExited({ state: 'exited', pid: handle.pid, exitCode: null, signal: null }));
    } else {
      // Not our child: no exit event, so watch the pid.
      tracked.poll = setInterval(() => {
        if (!alive(handle.pid)) tracked.markExited({ state: 'exited', pid: handle.pid, exitCode: null, signal: null });
      }, this.opts.adoptedPollMs);
      tracked.poll.unref();
    }
    this.tracked.set(handle.instanceId, tracked);
    return tracked;
  }

  async stop(instanceId: string, options: StopOptions = {}): Promise<void> {
    const tracked = this.tracked.get(instanceId);
    if (!tracked || tracked.status.state === 'exited') return;
    const timeoutMs = options.timeoutMs ?? this.opts.stopTimeoutMs;
    try {
      process.kill(tracked.handle.pid, tracked.stopSignal);
    } catch {
      // Already gone; the exit event or the poll reports it.
    }
    const timer = sleep(timeoutMs).then(() => 'timeout' as const);
    if ((await Promise.race([tracked.exited, timer])) === 'timeout') {
      signalGroup(tracked.handle.pid, 'SIGKILL');
      if (!tracked.child)
        tracked.markExited({ state: 'exited', pid: tracked.handle.pid, exitCode: null, signal: 'SIGKILL' });
      await tracked.exited;
    }
    await this.sidecars.stop(instanceId);
  }

  async kill(instanceId: string): Promise<void> {
    const tracked = this.tracked.get(instanceId);
    if (!tracked || tracked.status.state === 'exited') return;
    signalGroup(tracked.handle.pid, 'SIGKILL');
    if (!tracked.child) {
      // An adopted process cannot be waited for: poll until the kernel has reaped it.
      for (let i = 0; i < 100 && alive(tracked.handle.pid); i++) await sleep(20);
      tracked.markExited({ state: 'exited', pid: tracked.handle.pid, exitCode: null, signal: 'SIGKILL' });
    }
    await tracked.exited;
    await this.sidecars.stop(instanceId);
  }

  async adopt(): Promise<InstanceHandle[]> {
    const adopted: InstanceHandle[] = [];
    for (const { paths, meta } of await listVolumes(this.opts.dataDir)) {
      if (meta.executor !== this.kind || !meta.pid || !meta.port || this.tracked.has(meta.instanceId)) continue;
      if (!alive(meta.pid) || !(await this.looksLikeEngine(meta.pid, meta.engine))) {
        // The engine died while the cell was down: its pod goes with it.
        await this.sidecars.reap(meta.sidecars ?? []);
        continue;
      }
      const engine = this.opts.engines[meta.engine];
      this.ports.reserve(meta.port);
      const context: EngineContext = {
        spec: meta.spec,
        dataDir: paths.dataDir,
        volumeDir: paths.volumeDir,
        port: meta.port,
        listenHost: this.opts.listenHost,
        advertiseHost: this.opts.advertiseHost,
      };
      const launch = await engine.launch(context).catch(() => undefined);
      const tracked = this.track(
        {
          instanceId: meta.instanceId,
          executor: this.kind,
          pid: meta.pid,
          port: meta.port,
          host: this.opts.advertiseHost,
          volumeDir: paths.volumeDir,
          dataDir: paths.dataDir,
          startedAt: meta.updatedAt,
          adopted: true,
          context,
        },
        engine,
        launch?.stopSignal ?? 'SIGTERM',
        undefined,
      );
      if (meta.spec.sidecars?.length || meta.sidecars?.length) {
        const owner = launch?.runAs ?? engineOwner(engine);
        tracked.handle.sidecars = await this.sidecars.adopt(context, owner, meta.sidecars ?? []);
        await writeMeta(paths, { ...meta, sidecars: tracked.handle.sidecars });
      }
      adopted.push(tracked.handle);
    }
    return adopted;
  }

  /** Guards against pid reuse: the recorded pid must still run the engine's binary. */
  private async looksLikeEngine(pid: number, engine: string): Promise<boolean> {
    try {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replace(/\0/g, ' ');
      if (engine === 'redis') return cmdline.includes('redis-server');
      if (engine === 'postgres') return cmdline.includes('postgres');
      return true;
    } catch {
      return false;
    }
  }

  onExit(listener: ExitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
