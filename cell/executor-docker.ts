/**
 * The docker executor: same contract as the process executor, each instance a container created
 * through the Docker Engine API from the engine's image (`sf images build`). Everything an engine
 * does runs from its image, never from the host's binaries: first-time preparation, rewind,
 * promote and health checks go through `ContainerTools` (docker-engine-tools.ts).
 *
 * - Host networking and the volume bind-mounted at the same path, so the generated configuration
 *   and the volume's layout are identical in both executors and a volume can move between them
 *   (its data directory is chowned at every start to the engine's user where it runs).
 * - The engine runs as its image's unprivileged user (redis, postgres), never root.
 * - The fencing shot is `docker kill --signal KILL`; an exit is seen through `/containers/ID/wait`
 *   (or, if that connection breaks, by polling), whoever caused it.
 * - A restarted cell re-adopts the running containers labelled with its data directory.
 * - Limits of the spec's `resources` become the container's memory and CPU limits.
 */
import { createHash } from 'node:crypto';
import { appendFile, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { EngineKind, InstanceSpec, SidecarActual } from '../protocol';
import type { Availability, EngineContext } from './engine';
import type { EngineTlsFiles } from './engine-tls';
import { createEngineRegistry, type EngineRegistry } from './engine-registry';
import { ErrorCode, SfError, createLogger, errorMessageOf } from '../common';
import {
  startOnce,
  InstanceTracker,
  type ExitListener,
  type Executor,
  type InstanceHandle,
  type InstanceStatus,
  type StopOptions,
} from './executor';
import { DockerApi, demuxDockerStream, type DockerApiOptions } from './docker-api';
import { ContainerTools, imageUser } from './docker-engine-tools';
import { defaultEngineImage, imageExists } from './docker-images';
import { admitStart, listVolumes, readMeta, secureVolume, volumePaths, writeMeta } from './instance-volume';
import { DEFAULT_PORT_RANGE, PortAllocator, type PortRange } from './port-allocator';
import type { RunAs } from './run-command';
import { DockerSidecars } from './sidecar-docker';

export interface DockerExecutorOptions {
  dataDir: string;
  /** @default 20000-20999 */
  portRange?: PortRange;
  /** @default '127.0.0.1' */
  listenHost?: string;
  /** @default listenHost */
  advertiseHost?: string;
  /** Image per engine. @default DEFAULT_DOCKER_IMAGES */
  images?: Partial<Record<EngineKind, string>>;
  engines?: EngineRegistry;
  /** The cell's certificate (docs/tls.md): sidecars serve HTTPS with it to clients with a certificate. */
  tls?: EngineTlsFiles;
  docker?: DockerApiOptions;
  /** @default 120000 */
  startTimeoutMs?: number;
  /** @default 15000 */
  stopTimeoutMs?: number;
  /** @default 100 */
  healthIntervalMs?: number;
  /** How often a container is inspected when its wait connection broke. @default 1000 */
  pollMs?: number;
}

/** The images `sf images build` makes here; `tcp` needs one holding the spec's command. */
export const DEFAULT_DOCKER_IMAGES: Record<EngineKind, string> = {
  redis: defaultEngineImage('redis'),
  postgres: defaultEngineImage('postgres'),
  tcp: defaultEngineImage('redis'),
};

/** The unprivileged user each engine runs as inside its image. */
export const IMAGE_ENGINE_USERS: Record<EngineKind, string> = { redis: 'redis', postgres: 'postgres', tcp: 'nobody' };

/** Labels that let a restarted cell find its containers (and only its own). */
const LABEL_INSTANCE = 'sf.instance';
const LABEL_CELL_DIR = 'sf.cell-data-dir';

interface Tracked {
  handle: InstanceHandle;
  containerId: string;
  status: InstanceStatus;
  /** Resolves once the container has ended and its output is kept and it is removed. */
  exited: Promise<InstanceStatus>;
  /** The exit as the cell reports it (listeners told at once); `exited` resolves with `settled`. */
  markExited: (status: InstanceStatus) => void;
  settled: () => void;
}

interface ContainerState {
  Running?: boolean;
  Pid?: number;
  ExitCode?: number;
  OOMKilled?: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Milliseconds of each phase of a start, logged once it is healthy: where a slow start spent its time. */
class Phases {
  private last = Date.now();
  readonly spent: Record<string, number> = {};
  mark(phase: string): void {
    const now = Date.now();
    this.spent[phase] = now - this.last;
    this.last = now;
  }
}

export class DockerExecutor extends InstanceTracker<Tracked> implements Executor {
  readonly kind = 'docker' as const;
  private readonly api: DockerApi;
  private readonly engines: EngineRegistry;
  private readonly ports: PortAllocator;
  private readonly starting = new Map<string, Promise<InstanceHandle>>();
  private readonly listeners = new Set<ExitListener>();
  private readonly users = new Map<string, Promise<RunAs>>();
  private readonly listenHost: string;
  private readonly advertiseHost: string;
  private readonly dataDir: string;
  /** Distinguishes this cell's containers from other cells' on the same daemon. */
  private readonly cellTag: string;
  private readonly sidecars: DockerSidecars;
  private readonly log = createLogger('executor-docker', { destination: 'stderr' });

  constructor(private readonly options: DockerExecutorOptions) {
    super();
    this.api = new DockerApi(options.docker);
    this.engines = options.engines ?? createEngineRegistry();
    this.dataDir = path.resolve(options.dataDir);
    this.listenHost = options.listenHost ?? '127.0.0.1';
    this.advertiseHost = options.advertiseHost ?? this.listenHost;
    this.ports = new PortAllocator(options.portRange ?? DEFAULT_PORT_RANGE, this.listenHost);
    this.cellTag = createHash('sha256').update(this.dataDir).digest('hex').slice(0, 10);
    this.sidecars = new DockerSidecars({
      api: this.api,
      ports: this.ports,
      listenHost: this.listenHost,
      tls: options.tls,
      cellDataDir: this.dataDir,
      image: (ctx) => this.image(ctx.spec.engine),
      containerName: (id) => this.containerName(id),
    });
  }

  async available(): Promise<Availability> {
    try {
      const res = await this.api.call('GET', '/_ping', undefined, 1_000);
      if (res.status === 200) return { ok: true, reason: '' };
      return { ok: false, reason: `Docker daemon at ${this.api.socketPath} answered ${res.status} to /_ping` };
    } catch (err) {
      return { ok: false, reason: `no Docker daemon reachable at ${this.api.socketPath}: ${errorMessageOf(err)}` };
    }
  }

  image(engine: EngineKind): string {
    return this.options.images?.[engine] ?? DEFAULT_DOCKER_IMAGES[engine];
  }

  containerName(instanceId: string): string {
    return `sf-${instanceId}-${this.cellTag}`;
  }

  start(spec: InstanceSpec): Promise<InstanceHandle> {
    return startOnce(spec, this.tracked.get(spec.instanceId), this.starting, (s) => this.doStart(s));
  }

  private async doStart(spec: InstanceSpec): Promise<InstanceHandle> {
    const phases = new Phases();
    const availability = await this.available();
    if (!availability.ok) throw new SfError(ErrorCode.ExecutorUnavailable, availability.reason);
    const image = this.image(spec.engine);
    if (!(await imageExists(this.api, image)))
      throw new SfError(
        ErrorCode.ExecutorUnavailable,
        `image ${image} is not in the Docker daemon at ${this.api.socketPath}: build it with \`sf images build\``,
      );
    const owner = await this.imageOwner(image, spec.engine);
    phases.mark('image');
    const engine = this.engines[spec.engine];
    const previous = await readMeta(volumePaths(this.dataDir, spec.instanceId));
    let port: number;
    if (spec.port) {
      this.ports.reserve(spec.port);
      port = spec.port;
    } else {
      port = await this.ports.allocate(previous?.port);
    }
    try {
      const { paths, meta } = await admitStart(this.dataDir, spec, this.kind, port);
      const name = this.containerName(spec.instanceId);
      // A leftover container of an earlier attempt would make the name clash, and must not run
      // while the one-shot helpers below work on the volume.
      await this.api.call('DELETE', `/containers/${name}?force=true`).catch(() => undefined);
      // PostgreSQL ran as PID 1 of a container that is gone: its postmaster.pid names PID 1, which
      // in a helper's fresh container is alive (the helper itself), and pg_rewind's single-user
      // crash recovery would refuse to run. No container of this instance runs now, so it is stale.
      await rm(path.join(paths.dataDir, 'postmaster.pid'), { force: true });
      await secureVolume(paths, owner, false);
      phases.mark('volume');
      const context = this.context(spec, paths.volumeDir, paths.dataDir, port, image, owner);
      await engine.prepare(context);
      phases.mark('prepare');
      // Whatever prepare wrote as the cell (configuration, credentials) becomes the engine's own.
      await secureVolume(paths, owner, true);
      const launch = await engine.launch(context);
      const limits = spec.resources ?? {};
      const created = await this.api.call('POST', `/containers/create?name=${encodeURIComponent(name)}`, {
        Image: image,
        Entrypoint: [path.basename(launch.file)],
        Cmd: launch.args,
        // The image's own PATH and locale; the cell's environment never reaches an engine.
        Env: Object.entries({ HOME: paths.dataDir, ...(launch.env ?? {}) }).map(([k, v]) => `${k}=${v}`),
        User: owner ? `${owner.uid}:${owner.gid}` : undefined,
        WorkingDir: '/',
        StopSignal: launch.stopSignal,
        Labels: {
          [LABEL_INSTANCE]: spec.instanceId,
          [LABEL_CELL_DIR]: this.dataDir,
          'sf.service': spec.service,
          'sf.engine': spec.engine,
        },
        HostConfig: {
          NetworkMode: 'host',
          Binds: [`${paths.volumeDir}:${paths.volumeDir}`],
          ...(limits.memoryMb
            ? { Memory: limits.memoryMb * 1024 * 1024, MemorySwap: limits.memoryMb * 1024 * 1024 }
            : {}),
          ...(limits.cpus ? { NanoCpus: Math.round(limits.cpus * 1e9) } : {}),
        },
      });
      if (created.status !== 201)
        throw new SfError(
          ErrorCode.EngineCommandFailed,
          `docker create of ${name} failed (${created.status}): ${JSON.stringify(created.body)}`,
        );
      const containerId = (created.body as { Id: string }).Id;
      phases.mark('create');
      const started = await this.api.call('POST', `/containers/${containerId}/start`);
      if (started.status !== 204 && started.status !== 304)
        throw new SfError(
          ErrorCode.EngineCommandFailed,
          `docker start of ${name} failed (${started.status}): ${JSON.stringify(started.body)}`,
        );
      const state = await this.inspect(containerId);
      const pid = state?.Pid ?? -1;
      const tracked = this.track(
        {
          instanceId: spec.instanceId,
          executor: this.kind,
          pid,
          port,
          host: this.advertiseHost,
          volumeDir: paths.volumeDir,
          dataDir: paths.dataDir,
          startedAt: Date.now(),
          adopted: false,
          context,
        },
        containerId,
      );
      await writeMeta(paths, { ...meta, pid, port });
      phases.mark('start');
      await this.waitHealthy(tracked, name);
      phases.mark('healthy');
      await this.startSidecars(tracked, owner, previous?.sidecars ?? []);
      phases.mark('sidecars');
      this.log.info(
        { instanceId: spec.instanceId, role: spec.role, ms: phases.spent },
        `container ${name} started (ms per phase: ${Object.entries(phases.spent)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')})`,
      );
      return tracked.handle;
    } catch (err) {
      this.ports.release(port);
      throw err;
    }
  }

  async ensureSidecars(instanceId: string): Promise<SidecarActual[]> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return [];
    const spec = t.handle.context.spec;
    const owner = await this.imageOwner(this.image(spec.engine), spec.engine).catch(() => undefined);
    await this.startSidecars(t, owner, t.handle.sidecars ?? []);
    return t.handle.sidecars ?? [];
  }

  /** The pod's sidecar containers, once the engine answers; recorded on the volume. */
  private async startSidecars(tracked: Tracked, owner: RunAs | undefined, previous: SidecarActual[]): Promise<void> {
    const { context, instanceId } = tracked.handle;
    if (!context.spec.sidecars?.length) return;
    tracked.handle.sidecars = await this.sidecars.start(context, owner, previous);
    if (tracked.status.state === 'exited') return this.sidecars.stop(instanceId);
    const paths = volumePaths(this.dataDir, instanceId);
    const meta = await readMeta(paths);
    if (meta) await writeMeta(paths, { ...meta, sidecars: tracked.handle.sidecars });
  }

  private context(
    spec: InstanceSpec,
    volumeDir: string,
    dataDir: string,
    port: number,
    image: string,
    owner: RunAs | undefined,
  ): EngineContext {
    const tools = new ContainerTools({
      socketPath: this.api.socketPath,
      image,
      user: IMAGE_ENGINE_USERS[spec.engine],
      owner,
      volumeDir,
      container: () => {
        const t = this.tracked.get(spec.instanceId);
        return t && t.status.state === 'running' ? t.containerId : undefined;
      },
    });
    return { spec, dataDir, volumeDir, port, listenHost: this.listenHost, advertiseHost: this.advertiseHost, tools };
  }

  /** The engine's user in its image, looked up once per image. */
  private imageOwner(image: string, engine: EngineKind): Promise<RunAs> {
    const key = `${image}\0${engine}`;
    let user = this.users.get(key);
    if (!user) {
      user = imageUser(this.api.socketPath, image, IMAGE_ENGINE_USERS[engine]).catch((err: unknown) => {
        this.users.delete(key);
        throw new SfError(ErrorCode.ExecutorUnavailable, errorMessageOf(err));
      });
      this.users.set(key, user);
    }
    return user;
  }

  private async waitHealthy(tracked: Tracked, name: string): Promise<void> {
    const engine = this.engines[tracked.handle.context.spec.engine];
    const deadline = Date.now() + (this.options.startTimeoutMs ?? 120_000);
    for (;;) {
      if (tracked.status.state === 'exited') {
        this.tracked.delete(tracked.handle.instanceId);
        const why = tracked.status.signal ? `signal ${tracked.status.signal}` : `code ${tracked.status.exitCode}`;
        throw new SfError(
          ErrorCode.InstanceExited,
          `container ${name} exited during start (${why}): ${await this.logTail(tracked.handle.volumeDir)}`,
        );
      }
      if (await engine.healthy(tracked.handle.context)) return;
      if (Date.now() > deadline) {
        await this.kill(tracked.handle.instanceId);
        this.tracked.delete(tracked.handle.instanceId);
        throw new SfError(
          ErrorCode.StartTimeout,
          `container ${name} not healthy after ${this.options.startTimeoutMs ?? 120_000} ms: ${await this.logTail(tracked.handle.volumeDir)}`,
        );
      }
      await sleep(this.options.healthIntervalMs ?? 100);
    }
  }

  /** The engine's last words, from the container's output kept in `instance.log` (see watch). */
  private async logTail(volumeDir: string): Promise<string> {
    try {
      const text = await readFile(path.join(volumeDir, 'instance.log'), 'utf8');
      return text.slice(-1200).trim().split('\n').slice(-6).join(' | ');
    } catch {
      return '';
    }
  }

  private async inspect(containerId: string): Promise<ContainerState | undefined | null> {
    const res = await this.api.call('GET', `/containers/${containerId}/json`);
    if (res.status === 404) return null;
    return (res.body as { State?: ContainerState } | undefined)?.State;
  }

  private track(handle: InstanceHandle, containerId: string): Tracked {
    let resolveExited!: (status: InstanceStatus) => void;
    const exited = new Promise<InstanceStatus>((resolve) => (resolveExited = resolve));
    const tracked: Tracked = {
      handle,
      containerId,
      status: { state: 'running', pid: handle.pid, exitCode: null, signal: null },
      exited,
      markExited: () => undefined,
      settled: () => resolveExited(tracked.status),
    };
    tracked.markExited = (status) => {
      if (tracked.status.state === 'exited') return;
      tracked.status = status;
      this.ports.release(handle.port);
      // The pod ends with its engine, however the engine ended.
      void this.sidecars.stop(handle.instanceId);
      for (const listener of this.listeners) listener(handle.instanceId, status);
    };
    this.tracked.set(handle.instanceId, tracked);
    void this.watch(tracked);
    return tracked;
  }

  /**
   * Waits for the container to end, however that happens (its engine exits, a fence, a
   * `docker kill` behind the cell's back, the OOM killer), then keeps its output in the volume's
   * `instance.log` and removes it.
   */
  private async watch(t: Tracked): Promise<void> {
    while (t.status.state !== 'exited') {
      try {
        // No timeout: the daemon answers when the container stops.
        const res = await this.api.call(
          'POST',
          `/containers/${t.containerId}/wait?condition=not-running`,
          undefined,
          0,
        );
        if (res.status === 404) break;
        if (res.status === 200) break;
      } catch {
        // The connection broke (daemon restart, socket error): look, then wait again.
      }
      const state = await this.inspect(t.containerId).catch(() => undefined);
      if (state === null || state?.Running === false) break;
      await sleep(this.options.pollMs ?? 1_000);
    }
    const state = await this.inspect(t.containerId).catch(() => undefined);
    const exitCode = state?.ExitCode ?? null;
    // 137 = 128 + SIGKILL: how a kill (a fence, docker kill, the OOM killer) shows in a container.
    const signal = exitCode === 137 ? 'SIGKILL' : null;
    // Reported first: a failover waits for this report, not for the logs (two more daemon calls
    // that took seconds on a loaded host). The container has stopped, so nothing it runs writes
    // any more; `stop` and `kill` still return only once its output is kept and it is removed.
    t.markExited({ state: 'exited', pid: t.handle.pid, exitCode: signal ? null : exitCode, signal });
    await this.saveLogs(t.containerId, t.handle.instanceId).catch(() => undefined);
    await this.api.call('DELETE', `/containers/${t.containerId}?force=true`).catch(() => undefined);
    t.settled();
  }

  private async saveLogs(containerId: string, instanceId: string): Promise<void> {
    const res = await this.api.raw(`/containers/${containerId}/logs?stdout=1&stderr=1&timestamps=0`, 10_000);
    if (res.status !== 200) return;
    const { logFile } = volumePaths(this.dataDir, instanceId);
    await appendFile(logFile, demuxDockerStream(res.body), { mode: 0o600 });
  }

  async stop(instanceId: string, options: StopOptions = {}): Promise<void> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return;
    const seconds = Math.ceil((options.timeoutMs ?? this.options.stopTimeoutMs ?? 15_000) / 1000);
    // The daemon sends the image's StopSignal (the engine's clean shutdown), SIGKILL after t.
    await this.api
      .call('POST', `/containers/${t.containerId}/stop?t=${seconds}`, undefined, (seconds + 10) * 1000)
      .catch(() => undefined);
    await t.exited;
    await this.sidecars.stop(instanceId);
  }

  /** The fencing shot: `docker kill --signal KILL`, then wait until the daemon saw it end. */
  async kill(instanceId: string): Promise<void> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return;
    const res = await this.api.call('POST', `/containers/${t.containerId}/kill?signal=KILL`);
    if (res.status !== 204 && res.status !== 404 && res.status !== 409)
      throw new SfError(ErrorCode.FenceFailed, `docker kill of ${instanceId} failed (${res.status})`);
    await t.exited;
    await this.sidecars.stop(instanceId);
  }

  /**
   * Running containers labelled with this cell's data directory whose volume records them as a
   * docker instance are tracked again; containers of this cell that ended while it was down are
   * cleared away (their logs kept), and the cell reports those volumes from their records.
   */
  async adopt(): Promise<InstanceHandle[]> {
    if (!(await this.available()).ok) return [];
    const filters = encodeURIComponent(JSON.stringify({ label: [`${LABEL_CELL_DIR}=${this.dataDir}`] }));
    const res = await this.api.call('GET', `/containers/json?all=1&filters=${filters}`);
    if (res.status !== 200) return [];
    const containers = res.body as Array<{ Id: string; Image: string; State: string; Labels: Record<string, string> }>;
    const volumes = new Map((await listVolumes(this.dataDir)).map((v) => [v.meta.instanceId, v]));
    const adopted: InstanceHandle[] = [];
    for (const c of containers) {
      const instanceId = c.Labels[LABEL_INSTANCE];
      const volume = volumes.get(instanceId);
      const usable = volume && volume.meta.executor === this.kind && volume.meta.port && !this.tracked.has(instanceId);
      if (c.State !== 'running' || !usable) {
        if (c.State !== 'running') {
          if (volume) await this.saveLogs(c.Id, instanceId).catch(() => undefined);
          await this.api.call('DELETE', `/containers/${c.Id}?force=true`).catch(() => undefined);
        }
        continue;
      }
      const { paths, meta } = volume;
      const port = meta.port as number;
      const state = await this.inspect(c.Id);
      this.ports.reserve(port);
      const image = this.image(meta.engine);
      const owner = await this.imageOwner(image, meta.engine).catch(() => undefined);
      const tracked = this.track(
        {
          instanceId,
          executor: this.kind,
          pid: state?.Pid ?? meta.pid ?? -1,
          port,
          host: this.advertiseHost,
          volumeDir: paths.volumeDir,
          dataDir: paths.dataDir,
          startedAt: meta.updatedAt,
          adopted: true,
          context: this.context(meta.spec, paths.volumeDir, paths.dataDir, port, image, owner),
        },
        c.Id,
      );
      if (meta.spec.sidecars?.length || meta.sidecars?.length) {
        tracked.handle.sidecars = await this.sidecars.adopt(tracked.handle.context, owner, meta.sidecars ?? []);
        await writeMeta(paths, { ...meta, sidecars: tracked.handle.sidecars });
      }
      adopted.push(tracked.handle);
    }
    // Sidecars whose engine container is gone go too.
    await this.sidecars.reap(new Set(this.tracked.keys()));
    return adopted;
  }

  onExit(listener: ExitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
