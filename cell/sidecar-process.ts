/**
 * Sidecars of the process executor: each a detached process in its own process group, run as the
 * engine's user with a clean environment (its credentials included there, never in argv), its
 * output in `sidecar-KIND.log` of the instance's volume. Like engines, they outlive a cell
 * restart and are re-adopted from the volume record.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { appendFile } from 'node:fs/promises';
import path from 'node:path';
import type { EngineContext } from './engine';
import type { EngineTlsFiles } from './engine-tls';
import { alive, signalGroup, spawnDetached } from './process-group';
import type { PortAllocator } from './port-allocator';
import { findBinary, type RunAs } from './run-command';
import {
  SIDECARS,
  sidecarLogName,
  prepareSidecar,
  waitListening,
  type SidecarHandle,
  type SidecarRunner,
} from './sidecar';

export interface ProcessSidecarOptions {
  ports: PortAllocator;
  listenHost: string;
  /** The cell's certificate: sidecars serve HTTPS with it and require a client certificate. */
  tls?: EngineTlsFiles;
  /** How long a sidecar may take to listen. @default 20000 */
  startTimeoutMs?: number;
}

interface Running {
  handle: SidecarHandle;
  child: ChildProcess | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Guards against pid reuse: the recorded pid must still run the sidecar's binary. */
function runsBinary(pid: number, binary: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0].endsWith(binary);
  } catch {
    return false;
  }
}

export class ProcessSidecars implements SidecarRunner {
  private readonly running = new Map<string, Running[]>();
  private readonly stopping = new Map<string, Promise<void>>();

  constructor(private readonly options: ProcessSidecarOptions) {}

  async start(ctx: EngineContext, owner: RunAs | undefined, previous: SidecarHandle[]): Promise<SidecarHandle[]> {
    const id = ctx.spec.instanceId;
    const list = this.running.get(id) ?? [];
    this.running.set(id, list);
    for (const kind of ctx.spec.sidecars ?? []) {
      if (list.some((r) => r.handle.kind === kind)) continue;
      const def = SIDECARS[kind];
      const logFile = path.join(ctx.volumeDir, sidecarLogName(kind));
      const note = (line: string): Promise<void> =>
        appendFile(logFile, `sf: ${line}\n`, { mode: 0o600 }).catch(() => undefined);
      const file = await findBinary(def.binary);
      if (!file) {
        await note(`${def.binary} is not installed on this host (npm run setup installs it)`);
        continue;
      }
      const port = await this.options.ports.allocate(previous.find((p) => p.kind === kind)?.port);
      const launch = await prepareSidecar(def, ctx, { host: this.options.listenHost, port }, owner, this.options.tls);
      if (launch.error !== undefined) {
        this.options.ports.release(port);
        await note(`${kind} not started: ${launch.error}`);
        continue;
      }
      const { args, env } = launch;
      const child = await spawnDetached({ file, args, logFile, env, user: owner });
      let exited = false;
      child.once('exit', () => {
        exited = true;
        this.options.ports.release(port);
      });
      child.once('error', () => (exited = true));
      const listening = await waitListening(
        this.options.listenHost,
        port,
        this.options.startTimeoutMs ?? 20_000,
        () => exited,
      );
      if (!listening || !child.pid) {
        if (child.pid) signalGroup(child.pid, 'SIGKILL');
        this.options.ports.release(port);
        await note(`${kind} did not listen on port ${port}`);
        continue;
      }
      list.push({ handle: { kind, port, pid: child.pid, ...(this.options.tls ? { tls: true } : {}) }, child });
    }
    return list.map((r) => r.handle);
  }

  stop(instanceId: string): Promise<void> {
    const pending = this.stopping.get(instanceId);
    if (pending) return pending;
    const list = this.running.get(instanceId) ?? [];
    this.running.delete(instanceId);
    if (!list.length) return Promise.resolve();
    const done = Promise.all(list.map((r) => this.end(r))).then(() => {
      this.stopping.delete(instanceId);
    });
    this.stopping.set(instanceId, done);
    return done;
  }

  /** SIGTERM to the sidecar's group, SIGKILL if it lingers. */
  private async end({ handle, child }: Running): Promise<void> {
    if (handle.pid === null) return;
    const pid = handle.pid;
    const gone = child
      ? new Promise<void>((resolve) =>
          child.exitCode !== null || child.signalCode ? resolve() : child.once('exit', () => resolve()),
        )
      : undefined;
    signalGroup(pid, 'SIGTERM');
    for (let i = 0; i < 50 && alive(pid); i++) await sleep(50);
    if (alive(pid)) signalGroup(pid, 'SIGKILL');
    if (gone) await Promise.race([gone, sleep(2_000)]);
    this.options.ports.release(handle.port);
  }

  /** Ends the recorded sidecars of an instance whose engine is gone (it died while the cell was down). */
  async reap(recorded: SidecarHandle[]): Promise<void> {
    await Promise.all(
      recorded
        .filter((h) => h.pid !== null && alive(h.pid) && runsBinary(h.pid, SIDECARS[h.kind].binary))
        .map((handle) => this.end({ handle, child: undefined })),
    );
  }

  async adopt(ctx: EngineContext, owner: RunAs | undefined, recorded: SidecarHandle[]): Promise<SidecarHandle[]> {
    const list: Running[] = [];
    for (const handle of recorded) {
      const wanted = (ctx.spec.sidecars ?? []).includes(handle.kind);
      if (handle.pid === null || !alive(handle.pid) || !runsBinary(handle.pid, SIDECARS[handle.kind].binary)) continue;
      if (!wanted) {
        signalGroup(handle.pid, 'SIGTERM');
        continue;
      }
      this.options.ports.reserve(handle.port);
      list.push({ handle, child: undefined });
    }
    this.running.set(ctx.spec.instanceId, list);
    // Sidecars that died while the cell was down are started again: unlike the engine, they hold
    // no state and a restart decides nothing.
    return this.start(ctx, owner, recorded);
  }
}
