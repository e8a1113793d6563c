/**
 * The process supervisor of `sf up` (a supervisor, not a fuse). Each platform process
 * (state redis-server, control, router, cells) runs as a child; one that exits for any reason
 * other than a stop this supervisor asked for is started again after a backoff that doubles while
 * it keeps failing fast (250 ms up to 10 s) and resets once it has run for a while. Every exit
 * and restart is a line on stderr and in the child's log. Engines are not children of this
 * process (cells run them in their own process groups), so they keep serving through the restart
 * of any platform process. Only `stop()` ends children for good, in the order it is given.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';

export interface SupervisedSpec {
  name: string;
  file: string;
  args: string[];
  /** Where the child's stdout and stderr are appended, with the supervisor's own lines. */
  log: string;
}

export interface SupervisorOptions {
  env: NodeJS.ProcessEnv;
  /** First restart delay; doubles for each exit that follows a short run. @default 250 */
  initialBackoffMs?: number;
  /** @default 10000 */
  maxBackoffMs?: number;
  /** A child that ran this long before exiting restarts after `initialBackoffMs` again. @default 30000 */
  stableAfterMs?: number;
  /** Written (atomically) with `{name: pid}` of every running child after each start. */
  pidFile?: string;
  /** Where restart notices go besides the child's log. @default process.stderr */
  report?: (line: string) => void;
}

export const DEFAULT_SUPERVISOR_OPTIONS = {
  initialBackoffMs: 250,
  maxBackoffMs: 10_000,
  stableAfterMs: 30_000,
} as const;

interface Supervised {
  spec: SupervisedSpec;
  proc: ChildProcess;
  out: WriteStream;
  startedAt: number;
  backoffMs: number;
  restarts: number;
  timer: NodeJS.Timeout | null;
}

export class Supervisor {
  private readonly children = new Map<string, Supervised>();
  private readonly opts: Required<Omit<SupervisorOptions, 'pidFile'>> & { pidFile?: string };
  private stopping = false;
  private pidWrite: Promise<void> = Promise.resolve();

  constructor(options: SupervisorOptions) {
    this.opts = {
      env: options.env,
      initialBackoffMs: options.initialBackoffMs ?? DEFAULT_SUPERVISOR_OPTIONS.initialBackoffMs,
      maxBackoffMs: options.maxBackoffMs ?? DEFAULT_SUPERVISOR_OPTIONS.maxBackoffMs,
      stableAfterMs: options.stableAfterMs ?? DEFAULT_SUPERVISOR_OPTIONS.stableAfterMs,
      pidFile: options.pidFile,
      report: options.report ?? ((line) => void process.stderr.write(`${line}\n`)),
    };
  }

  /** Starts `spec` and keeps it running until `stop()`. */
  add(spec: SupervisedSpec): void {
    if (this.children.has(spec.name)) throw new Error(`${spec.name} is already supervised`);
    const out = createWriteStream(spec.log, { flags: 'a' });
    const entry: Supervised = {
      spec,
      proc: null as unknown as ChildProcess,
      out,
      startedAt: 0,
      backoffMs: this.opts.initialBackoffMs,
      restarts: 0,
      timer: null,
    };
    this.children.set(spec.name, entry);
    this.launch(entry);
  }

  /** The current process of `name`, if running. */
  pid(name: string): number | undefined {
    const c = this.children.get(name);
    return c && running(c.proc) ? c.proc.pid : undefined;
  }

  /** How often `name` has been restarted since `add`. */
  restarts(name: string): number {
    return this.children.get(name)?.restarts ?? 0;
  }

  logOf(name: string): string | undefined {
    return this.children.get(name)?.spec.log;
  }

  /**
   * Stops every child for good: the groups in `order` one after another (each group's members
   * together), then any child not named, SIGTERM first and SIGKILL after `killAfterMs`.
   */
  async stop(order: string[][], killAfterMs = 10_000): Promise<void> {
    this.stopping = true;
    for (const c of this.children.values()) if (c.timer) clearTimeout(c.timer);
    const named = new Set(order.flat());
    const groups = [...order, [...this.children.keys()].filter((n) => !named.has(n))];
    for (const group of groups) {
      await Promise.all(
        group.map(async (name) => {
          const c = this.children.get(name);
          if (!c || !running(c.proc)) return;
          const exited = new Promise<void>((r) => c.proc.once('exit', () => r()));
          c.proc.kill('SIGTERM');
          const timer = setTimeout(() => c.proc.kill('SIGKILL'), killAfterMs);
          await exited;
          clearTimeout(timer);
        }),
      );
    }
    for (const c of this.children.values()) c.out.end();
    await this.pidWrite;
  }

  private launch(c: Supervised): void {
    const { spec } = c;
    const proc = spawn(spec.file, spec.args, { env: this.opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    c.proc = proc;
    c.startedAt = Date.now();
    proc.stdout?.pipe(c.out, { end: false });
    proc.stderr?.pipe(c.out, { end: false });
    proc.once('error', (err) => this.note(c, `sf up: ${spec.name} could not start: ${err.message}`));
    proc.once('exit', (code, signal) => this.onExit(c, proc, code, signal));
    this.writePids();
  }

  private onExit(c: Supervised, proc: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping || c.proc !== proc) return;
    const ranMs = Date.now() - c.startedAt;
    if (ranMs >= this.opts.stableAfterMs) c.backoffMs = this.opts.initialBackoffMs;
    const delay = c.backoffMs;
    c.backoffMs = Math.min(c.backoffMs * 2, this.opts.maxBackoffMs);
    c.restarts++;
    this.note(
      c,
      `sf up: ${c.spec.name} exited (${signal ?? `code ${code}`}) after ${(ranMs / 1000).toFixed(1)} s; ` +
        `restarting it in ${delay} ms (restart ${c.restarts}); see ${c.spec.log}`,
    );
    c.timer = setTimeout(() => {
      c.timer = null;
      if (!this.stopping) this.launch(c);
    }, delay);
  }

  private note(c: Supervised, line: string): void {
    this.opts.report(line);
    c.out.write(`${new Date().toISOString()} ${line}\n`);
  }

  private writePids(): void {
    const file = this.opts.pidFile;
    if (!file) return;
    const pids: Record<string, number> = {};
    for (const [name, c] of this.children) if (c.proc?.pid && running(c.proc)) pids[name] = c.proc.pid;
    // One write at a time, in order, each replacing the file whole.
    this.pidWrite = this.pidWrite
      .then(async () => {
        const tmp = `${file}.${process.pid}.tmp`;
        await writeFile(tmp, JSON.stringify(pids));
        await rename(tmp, file);
      })
      .catch(() => undefined);
  }
}

function running(proc: ChildProcess | null): boolean {
  return !!proc && proc.exitCode === null && proc.signalCode === null;
}
