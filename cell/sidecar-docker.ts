/**
 * Sidecars of the docker executor: each a container of the engine's image (which carries the
 * exporters, docker-images.ts), sharing the instance's network (the host's, as the engine's
 * container does) and its volume, run as the engine's unprivileged user. Credentials are in the
 * container's environment, never in its command. Labels tie a sidecar to its instance and cell,
 * so a restarted cell finds it again, and keep it apart from engine containers.
 */
import path from 'node:path';
import { appendFile } from 'node:fs/promises';
import type { SidecarKind } from '../protocol';
import { demuxDockerStream, type DockerApi } from './docker-api';
import type { EngineContext } from './engine';
import type { EngineTlsFiles } from './engine-tls';
import type { PortAllocator } from './port-allocator';
import type { RunAs } from './run-command';
import {
  SIDECARS,
  sidecarLogName,
  prepareSidecar,
  waitListening,
  type SidecarHandle,
  type SidecarRunner,
} from './sidecar';

export const LABEL_SIDECAR = 'sf.sidecar';
export const LABEL_SIDECAR_OF = 'sf.sidecar-of';
export const LABEL_SIDECAR_CELL_DIR = 'sf.sidecar-cell-data-dir';

export interface DockerSidecarOptions {
  api: DockerApi;
  ports: PortAllocator;
  listenHost: string;
  /** The cell's certificate: sidecars serve HTTPS with it and require a client certificate. */
  tls?: EngineTlsFiles;
  /** The cell's data directory, as labelled on its containers. */
  cellDataDir: string;
  /** The engine's image for an instance's engine. */
  image: (ctx: EngineContext) => string;
  /** The engine container's name; a sidecar's is that plus its kind. */
  containerName: (instanceId: string) => string;
  /** How long a sidecar container may take to listen (container start is slow on a loaded host). @default 30000 */
  startTimeoutMs?: number;
}

interface Listed {
  Id: string;
  State: string;
  Labels: Record<string, string>;
}

export class DockerSidecars implements SidecarRunner {
  private readonly running = new Map<string, SidecarHandle[]>();
  private readonly stopping = new Map<string, Promise<void>>();

  constructor(private readonly options: DockerSidecarOptions) {}

  private name(instanceId: string, kind: SidecarKind): string {
    return `${this.options.containerName(instanceId)}-${kind}`;
  }

  async start(ctx: EngineContext, owner: RunAs | undefined, previous: SidecarHandle[]): Promise<SidecarHandle[]> {
    const { api, ports, listenHost } = this.options;
    const id = ctx.spec.instanceId;
    const list = this.running.get(id) ?? [];
    this.running.set(id, list);
    for (const kind of ctx.spec.sidecars ?? []) {
      if (list.some((h) => h.kind === kind)) continue;
      const def = SIDECARS[kind];
      const name = this.name(id, kind);
      const note = (line: string): Promise<void> =>
        appendFile(path.join(ctx.volumeDir, sidecarLogName(kind)), `sf: ${line}\n`, { mode: 0o600 }).catch(
          () => undefined,
        );
      await api.call('DELETE', `/containers/${name}?force=true`).catch(() => undefined);
      const port = await ports.allocate(previous.find((p) => p.kind === kind)?.port);
      // The volume is bind-mounted at the same path: the container reads the files the cell wrote.
      const launch = await prepareSidecar(def, ctx, { host: listenHost, port }, owner, this.options.tls);
      if (launch.error !== undefined) {
        ports.release(port);
        await note(`${kind} not started: ${launch.error}`);
        continue;
      }
      const { args, env } = launch;
      const created = await api.call('POST', `/containers/create?name=${encodeURIComponent(name)}`, {
        Image: this.options.image(ctx),
        Entrypoint: [def.binary],
        Cmd: args,
        Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
        User: owner ? `${owner.uid}:${owner.gid}` : undefined,
        WorkingDir: '/',
        Labels: {
          [LABEL_SIDECAR]: kind,
          [LABEL_SIDECAR_OF]: id,
          [LABEL_SIDECAR_CELL_DIR]: this.options.cellDataDir,
          'sf.sidecar-port': String(port),
          ...(this.options.tls ? { 'sf.sidecar-tls': '1' } : {}),
        },
        HostConfig: {
          NetworkMode: 'host',
          Binds: [`${ctx.volumeDir}:${ctx.volumeDir}`],
          // An exporter needs little; a runaway one must not starve the engine beside it.
          Memory: 128 * 1024 * 1024,
          MemorySwap: 128 * 1024 * 1024,
        },
      });
      const containerId = (created.body as { Id?: string } | undefined)?.Id;
      const started = containerId
        ? await api.call('POST', `/containers/${containerId}/start`).catch(() => undefined)
        : undefined;
      const ok = started && (started.status === 204 || started.status === 304);
      const listening =
        ok &&
        (await waitListening(listenHost, port, this.options.startTimeoutMs ?? 30_000, () => false).catch(() => false));
      if (!ok || !listening || !containerId) {
        if (containerId) await this.keepLogs(containerId, ctx.volumeDir, kind);
        await api.call('DELETE', `/containers/${name}?force=true`).catch(() => undefined);
        ports.release(port);
        await note(
          `${kind} container did not listen on port ${port} (${created.status} ${JSON.stringify(created.body)})`,
        );
        continue;
      }
      const inspected = await api.call('GET', `/containers/${containerId}/json`);
      const pid = (inspected.body as { State?: { Pid?: number } } | undefined)?.State?.Pid ?? null;
      list.push({ kind, port, pid, ...(this.options.tls ? { tls: true } : {}) });
    }
    return [...list];
  }

  /** The sidecar's output into its log in the volume, before the container goes. */
  private async keepLogs(containerId: string, volumeDir: string, kind: SidecarKind): Promise<void> {
    const res = await this.options.api
      .raw(`/containers/${containerId}/logs?stdout=1&stderr=1&timestamps=0`, 10_000)
      .catch(() => undefined);
    if (res?.status === 200)
      await appendFile(path.join(volumeDir, sidecarLogName(kind)), demuxDockerStream(res.body), { mode: 0o600 }).catch(
        () => undefined,
      );
  }

  private async list(instanceId: string): Promise<Listed[]> {
    const filters = encodeURIComponent(
      JSON.stringify({
        label: [`${LABEL_SIDECAR_OF}=${instanceId}`, `${LABEL_SIDECAR_CELL_DIR}=${this.options.cellDataDir}`],
      }),
    );
    const res = await this.options.api.call('GET', `/containers/json?all=1&filters=${filters}`);
    return res.status === 200 ? (res.body as Listed[]) : [];
  }

  /** Removes every sidecar container of the instance, tracked or left by an earlier life of the cell. */
  stop(instanceId: string): Promise<void> {
    const pending = this.stopping.get(instanceId);
    if (pending) return pending;
    const tracked = this.running.get(instanceId) ?? [];
    this.running.delete(instanceId);
    const done = (async () => {
      const containers = await this.list(instanceId).catch(() => [] as Listed[]);
      await Promise.all(containers.map((c) => this.remove(c.Id)));
      for (const h of tracked) this.options.ports.release(h.port);
    })().finally(() => this.stopping.delete(instanceId));
    this.stopping.set(instanceId, done);
    return done;
  }

  private async remove(containerId: string): Promise<void> {
    await this.options.api.call('DELETE', `/containers/${containerId}?force=true`).catch(() => undefined);
  }

  /** Removes this cell's sidecar containers whose instance is not among `keep` (their engine is gone). */
  async reap(keep: ReadonlySet<string>): Promise<void> {
    const filters = encodeURIComponent(
      JSON.stringify({ label: [`${LABEL_SIDECAR_CELL_DIR}=${this.options.cellDataDir}`] }),
    );
    const res = await this.options.api.call('GET', `/containers/json?all=1&filters=${filters}`).catch(() => undefined);
    if (res?.status !== 200) return;
    for (const c of res.body as Listed[]) if (!keep.has(c.Labels[LABEL_SIDECAR_OF])) await this.remove(c.Id);
  }

  async adopt(ctx: EngineContext, owner: RunAs | undefined, recorded: SidecarHandle[]): Promise<SidecarHandle[]> {
    const id = ctx.spec.instanceId;
    const wanted = new Set(ctx.spec.sidecars ?? []);
    const list: SidecarHandle[] = [];
    for (const c of await this.list(id).catch(() => [] as Listed[])) {
      const kind = c.Labels[LABEL_SIDECAR] as SidecarKind;
      const port = Number(c.Labels['sf.sidecar-port']);
      if (c.State !== 'running' || !wanted.has(kind) || !port || list.some((h) => h.kind === kind)) {
        await this.options.api.call('DELETE', `/containers/${c.Id}?force=true`).catch(() => undefined);
        continue;
      }
      this.options.ports.reserve(port);
      const pid = recorded.find((r) => r.kind === kind)?.pid ?? null;
      list.push({ kind, port, pid, ...(c.Labels['sf.sidecar-tls'] === '1' ? { tls: true } : {}) });
    }
    this.running.set(id, list);
    return this.start(ctx, owner, recorded);
  }
}
