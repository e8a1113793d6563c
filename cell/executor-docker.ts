/**
 * The docker executor: same contract as the process executor, each instance a container created
 * through the Docker Engine API. Containers use host networking and bind-mount the volume at the
 * same path, so the engine's generated configuration (port, data dir) is identical in both
 * executors. Where no daemon answers, `available()` says so with the reason and `start` refuses:
 * this executor is never emulated.
 *
 * Limitation (docs/cells.md): first-time preparation (initdb, pg_basebackup) and `pg_ctl promote`
 * still run with the host's engine binaries against the bind-mounted directory.
 */
import path from 'node:path';
import type { EngineKind, InstanceSpec } from '../protocol';
import type { Availability, EngineContext } from './engine';
import { createEngineRegistry, type EngineRegistry } from './engine-registry';
import { ErrorCode, SfError, errorMessageOf } from '../common';
import type { ExitListener, Executor, InstanceHandle, InstanceStatus, StopOptions } from './executor';
import { DockerApi, type DockerApiOptions } from './docker-api';
import { admitStart, readMeta, volumePaths, writeMeta } from './instance-volume';
import { DEFAULT_PORT_RANGE, PortAllocator, type PortRange } from './port-allocator';

export interface DockerExecutorOptions {
  dataDir: string;
  /** @default 20000-20999 */
  portRange?: PortRange;
  /** @default '127.0.0.1' */
  listenHost?: string;
  /** @default listenHost */
  advertiseHost?: string;
  /** Image per engine. @default { redis: 'redis:7', postgres: 'postgres:15', tcp: 'busybox' } */
  images?: Partial<Record<EngineKind, string>>;
  engines?: EngineRegistry;
  docker?: DockerApiOptions;
  /** @default 120000 */
  startTimeoutMs?: number;
  /** @default 1000 */
  pollMs?: number;
}

export const DEFAULT_DOCKER_IMAGES: Record<EngineKind, string> = {
  redis: 'redis:7',
  postgres: 'postgres:15',
  tcp: 'busybox',
};

interface Tracked {
  handle: InstanceHandle;
  containerId: string;
  status: InstanceStatus;
  poll: NodeJS.Timeout;
}

export class DockerExecutor implements Executor {
  readonly kind = 'docker' as const;
  private readonly api: DockerApi;
  private readonly engines: EngineRegistry;
  private readonly ports: PortAllocator;
  private readonly tracked = new Map<string, Tracked>();
  private readonly listeners = new Set<ExitListener>();
  private readonly listenHost: string;
  private readonly advertiseHost: string;

  constructor(private readonly options: DockerExecutorOptions) {
    this.api = new DockerApi(options.docker);
    this.engines = options.engines ?? createEngineRegistry();
    this.listenHost = options.listenHost ?? '127.0.0.1';
    this.advertiseHost = options.advertiseHost ?? this.listenHost;
    this.ports = new PortAllocator(options.portRange ?? DEFAULT_PORT_RANGE, this.listenHost);
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

  async start(spec: InstanceSpec): Promise<InstanceHandle> {
    const existing = this.tracked.get(spec.instanceId);
    if (existing && existing.status.state === 'running') return existing.handle;
    const availability = await this.available();
    if (!availability.ok) throw new SfError(ErrorCode.ExecutorUnavailable, availability.reason);

    const engine = this.engines[spec.engine];
    const previous = await readMeta(volumePaths(this.options.dataDir, spec.instanceId));
    const port = spec.port ?? (await this.ports.allocate(previous?.port));
    const { paths, meta } = await admitStart(this.options.dataDir, spec, this.kind, port);
    const context: EngineContext = {
      spec,
      dataDir: paths.dataDir,
      volumeDir: paths.volumeDir,
      port,
      listenHost: this.listenHost,
      advertiseHost: this.advertiseHost,
    };
    await engine.prepare(context);
    const launch = await engine.launch(context);
    const image = this.options.images?.[spec.engine] ?? DEFAULT_DOCKER_IMAGES[spec.engine];
    const name = `sf-${spec.instanceId}`;
    // A leftover container of an earlier attempt would make the name clash.
    await this.api.call('DELETE', `/containers/${name}?force=true`).catch(() => undefined);
    const created = await this.api.call('POST', `/containers/create?name=${encodeURIComponent(name)}`, {
      Image: image,
      // The image's PATH finds the binary; host paths of binaries differ from the image's.
      Cmd: [path.basename(launch.file), ...launch.args],
      Env: Object.entries(launch.env ?? {}).map(([k, v]) => `${k}=${v}`),
      User: launch.runAs ? `${launch.runAs.uid}:${launch.runAs.gid}` : undefined,
      StopSignal: launch.stopSignal,
      Labels: { 'sf.instance': spec.instanceId, 'sf.service': spec.service },
      HostConfig: { NetworkMode: 'host', Binds: [`${paths.volumeDir}:${paths.volumeDir}`] },
    });
    if (created.status !== 201)
      throw new SfError(
        ErrorCode.EngineCommandFailed,
        `docker create failed (${created.status}): ${JSON.stringify(created.body)}`,
      );
    const containerId = (created.body as { Id: string }).Id;
    const started = await this.api.call('POST', `/containers/${containerId}/start`);
    if (started.status !== 204 && started.status !== 304)
      throw new SfError(ErrorCode.EngineCommandFailed, `docker start failed (${started.status})`);
    const inspect = await this.api.call('GET', `/containers/${containerId}/json`);
    const pid = (inspect.body as { State?: { Pid?: number } }).State?.Pid ?? -1;
    const handle: InstanceHandle = {
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
    };
    this.track(handle, containerId);
    await writeMeta(paths, { ...meta, pid, port });
    const deadline = Date.now() + (this.options.startTimeoutMs ?? 120_000);
    while (!(await engine.healthy(context))) {
      if (this.status(spec.instanceId).state === 'exited' || Date.now() > deadline) {
        await this.kill(spec.instanceId);
        throw new SfError(ErrorCode.StartTimeout, `container ${name} did not become healthy`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    return handle;
  }

  private track(handle: InstanceHandle, containerId: string): void {
    const poll = setInterval(() => void this.refresh(handle.instanceId), this.options.pollMs ?? 1_000);
    poll.unref();
    this.tracked.set(handle.instanceId, {
      handle,
      containerId,
      status: { state: 'running', pid: handle.pid, exitCode: null, signal: null },
      poll,
    });
  }

  private async refresh(instanceId: string): Promise<void> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return;
    const res = await this.api.call('GET', `/containers/${t.containerId}/json`).catch(() => undefined);
    const state = (res?.body as { State?: { Running?: boolean; ExitCode?: number } } | undefined)?.State;
    if (res && (res.status === 404 || state?.Running === false)) this.markExited(t, state?.ExitCode ?? null, null);
  }

  private markExited(t: Tracked, exitCode: number | null, signal: string | null): void {
    if (t.status.state === 'exited') return;
    clearInterval(t.poll);
    this.ports.release(t.handle.port);
    t.status = { state: 'exited', pid: t.handle.pid, exitCode, signal };
    for (const l of this.listeners) l(t.handle.instanceId, t.status);
  }

  async stop(instanceId: string, options: StopOptions = {}): Promise<void> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return;
    const seconds = Math.ceil((options.timeoutMs ?? 15_000) / 1000);
    await this.api.call('POST', `/containers/${t.containerId}/stop?t=${seconds}`, undefined, (seconds + 5) * 1000);
    this.markExited(t, null, null);
  }

  async kill(instanceId: string): Promise<void> {
    const t = this.tracked.get(instanceId);
    if (!t || t.status.state === 'exited') return;
    await this.api.call('POST', `/containers/${t.containerId}/kill?signal=SIGKILL`);
    this.markExited(t, null, 'SIGKILL');
  }

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

  /** Re-adoption of containers by label is not built yet; volumes are still reported by the cell. */
  async adopt(): Promise<InstanceHandle[]> {
    return [];
  }

  onExit(listener: ExitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
