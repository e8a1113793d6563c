/**
 * What the fault checker needs from a platform, whichever way it runs: the control API and the
 * `sf` CLI as an operator uses them, the router's admin table, the state store's cell reports
 * (engine pids, registrations), the volumes on disk, and a way to restart each component. Two
 * platforms implement it:
 * - `processes` (fault-platform.ts): state redis, control, router and cells started one by one
 *   by the checker, which restarts them itself; it can put a cell in a network namespace;
 * - `sf-up` (fault-sf-up-platform.ts): one real `sf up`, whose supervisor restarts what the
 *   checker kills, and which the checker can stop (Ctrl-C) and start again.
 */
import { execFile } from 'node:child_process';
import { appendFileSync, chmodSync, mkdirSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import type { Redis } from 'ioredis';
import { fetchWithCa, type CaFetchInit } from '../../common/https-fetch';
import { keyLayout } from '../../protocol/keys';
import { makeTempDir, type ManagedProcess } from './processes';

/** The `sf` entry point of this build (dist/cli/sf.js). */
export const SF_SCRIPT = resolve(__dirname, '..', '..', 'cli', 'sf.js');

/** How the checker runs the platform (`--platform`). */
export type PlatformMode = 'processes' | 'sf-up';
export const PLATFORM_MODES: readonly PlatformMode[] = ['processes', 'sf-up'];

export interface InstanceViewLite {
  id: string;
  cell: string;
  role: 'primary' | 'replica';
  state: string;
  epoch: number;
  host: string | null;
  port: number | null;
  last_error: { code: string; message: string } | null;
}

export interface ServiceViewLite {
  name: string;
  engine: string;
  port: number;
  status: string;
  message: string | null;
  epoch: number;
  instances: InstanceViewLite[];
}

export interface RouteBackendLite {
  id: string;
  host: string;
  port: number;
  role: string;
  epoch: number;
  state: string;
}

export interface ApiResponse<T> {
  status: number;
  body: T;
}

export interface CliResult {
  code: number;
  output: string;
  ms: number;
}

export const KEYS = keyLayout();
const PG_OR_REDIS = /redis-server|postgres/;

function canBind(port: number): Promise<boolean> {
  return new Promise((done) => {
    const srv = createServer();
    srv.once('error', () => done(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => done(true)));
  });
}

/**
 * A block of free ports in 22000-26999, checked port by port: cells need a range each and the
 * router group a range of route ports. Below bench/lib/processes' single ports (27000+) and the
 * kernel's ephemeral range.
 */
export async function freeBlock(size: number, taken: Set<number>): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 22_000 + Math.floor(Math.random() * (5_000 / size - 1)) * size;
    if (taken.has(base)) continue;
    const checks = await Promise.all(Array.from({ length: size }, (_, i) => canBind(base + i)));
    if (checks.every(Boolean)) {
      taken.add(base);
      return base;
    }
  }
  throw new Error('no free block of ports between 22000 and 26999');
}

export async function freeSinglePort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = 27_000 + Math.floor(Math.random() * 1_000);
    if (taken.has(port)) continue;
    if (await canBind(port)) {
      taken.add(port);
      return port;
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface PlatformBaseOptions {
  /** Log level of the platform processes. */
  logLevel: string;
  /** When set, every platform process appends its whole output to `<logDir>/<name>.log`. */
  logDir: string;
}

export abstract class FaultPlatformBase {
  abstract readonly mode: PlatformMode;
  readonly token = `fault-admin-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}`;
  readonly dataDir: string;
  controlPort = 0;
  routerAdminPort = 0;
  routePortFrom = 0;
  state!: Redis;
  /** Every engine pid a cell ever reported, so none outlives the run. */
  readonly enginePids = new Set<number>();
  /** performance.now() when the router last answered its health check after a start; undefined while down. */
  protected routerUpAt: number | undefined;
  protected readonly ports = new Set<number>();

  constructor(private readonly baseOptions: PlatformBaseOptions) {
    if (baseOptions.logDir) mkdirSync(baseOptions.logDir, { recursive: true });
    this.dataDir = makeTempDir('sf-fault-');
    // PostgreSQL runs as the postgres user when this runs as root: it must reach its volume.
    chmodSync(this.dataDir, 0o755);
  }

  abstract get cellNames(): string[];
  abstract start(): Promise<void>;
  abstract stop(): Promise<void>;
  /** Output tails of the platform processes, for a report when something breaks. */
  abstract logs(): Record<string, string>;
  /**
   * Cells whose agent is not back: not running, or started but not yet registered (an agent
   * registers only after it has re-adopted its engines and judged their roles). Nothing on such
   * a cell can demote an engine that outlived its agent.
   */
  abstract absentAgents(): Promise<Set<string>>;
  /** SIGKILL of a cell agent (its engines keep running), then its start; says how it came back. */
  abstract restartCell(name: string, downMs: number): Promise<string>;
  /** Stops control (SIGKILL: its leader lock expires; SIGTERM: it releases it); back once healthy. */
  abstract restartControl(signal: 'SIGKILL' | 'SIGTERM'): Promise<void>;
  /** SIGKILL of the router; back once healthy. */
  abstract restartRouter(): Promise<void>;
  /** SIGKILL of the state store, back on its append-only file; `wipe` deletes its files first. */
  abstract restartStateRedis(wipe: boolean): Promise<void>;
  /** Where cell `name` keeps its volumes (`<dir>/instances/<id>`). */
  protected abstract cellDataDir(name: string): string;

  /** Keeps a process's whole output in the log directory, if there is one. */
  protected keepLog(proc: ManagedProcess): ManagedProcess {
    const dir = this.baseOptions.logDir;
    if (!dir) return proc;
    const file = join(dir, `${proc.name}.log`);
    const write = (chunk: Buffer): void => appendFileSync(file, chunk);
    appendFileSync(file, `--- ${new Date().toISOString()} started, pid ${proc.pid}\n`);
    proc.child.stdout?.on('data', write);
    proc.child.stderr?.on('data', write);
    void proc.exited.then((code) =>
      appendFileSync(file, `--- ${new Date().toISOString()} exited ${code ?? proc.child.signalCode}\n`),
    );
    return proc;
  }

  /**
   * The platform CA file that verifies control when it speaks HTTPS (sf up's default); undefined
   * for a control on plain HTTP.
   */
  protected controlCaFile(): string | undefined {
    return undefined;
  }

  private controlCaPem: Buffer | undefined;

  get controlUrl(): string {
    return `${this.controlCaFile() ? 'https' : 'http'}://127.0.0.1:${this.controlPort}`;
  }

  /** fetch to control, verified against the platform CA when control speaks HTTPS. */
  async controlFetch(path: string, init: CaFetchInit = {}): Promise<Response> {
    const caFile = this.controlCaFile();
    if (caFile && !this.controlCaPem) this.controlCaPem = readFileSync(caFile);
    return fetchWithCa(`${this.controlUrl}${path}`, init, caFile ? this.controlCaPem : undefined);
  }

  protected get logDir(): string {
    return this.baseOptions.logDir;
  }

  protected env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      SF_API_TOKEN: this.token,
      SF_CONTROL_URL: this.controlUrl,
      // Token files land here, never in the operator's home.
      SF_HOME: join(this.dataDir, 'home'),
      SF_LOG_LEVEL: this.baseOptions.logLevel,
    };
  }

  /** When the router came back after its last start; undefined while it is down or starting. */
  routerUpSince(): number | undefined {
    return this.routerUpAt;
  }

  /** `cell/instanceId` of every volume directory on disk. */
  volumes(): string[] {
    const out: string[] = [];
    for (const cell of this.cellNames) {
      let ids: string[] = [];
      try {
        ids = readdirSync(join(this.cellDataDir(cell), 'instances'));
      } catch {
        // No volume on this cell yet.
      }
      for (const id of ids) out.push(`${cell}/${id}`);
    }
    return out.sort();
  }

  async aliveCells(): Promise<string[]> {
    const res = await this.api<{ resources: Array<{ name: string; alive: boolean }> }>('GET', '/v3/cells');
    return res.status === 200 ? res.body.resources.filter((c) => c.alive).map((c) => c.name) : [];
  }

  async api<T = unknown>(method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<ApiResponse<T>> {
    const res = await this.controlFetch(path, {
      method,
      headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Not JSON: keep the text.
    }
    return { status: res.status, body: parsed as T };
  }

  /**
   * Creates service key `key` of `service` and returns its user (`POST
   * /v3/service_instances/:name/keys`, control/api/routes-service-keys.ts).
   */
  async serviceKey(service: string, key: string): Promise<{ username: string; password: string }> {
    const res = await this.api<{ username?: string; password?: string }>(
      'POST',
      `/v3/service_instances/${service}/keys`,
      { name: key },
      30_000,
    );
    if (res.status !== 201 || !res.body.username || res.body.password === undefined)
      throw new Error(`service key ${key} of ${service}: ${res.status} ${JSON.stringify(res.body)}`);
    return { username: res.body.username, password: res.body.password };
  }

  async service(name: string): Promise<ServiceViewLite | undefined> {
    try {
      const res = await this.api<ServiceViewLite>('GET', `/v3/service_instances/${name}`, undefined, 3_000);
      return res.status === 200 ? res.body : undefined;
    } catch {
      return undefined;
    }
  }

  /** The router's active primary backend(s) for a route port, from its admin `/routes`. */
  async routerBackends(port: number): Promise<RouteBackendLite[] | undefined> {
    try {
      // The router's admin token is its SF_API_TOKEN, which is this platform's token.
      const res = await fetch(`http://127.0.0.1:${this.routerAdminPort}/routes`, {
        headers: { authorization: `Bearer ${this.token}` },
        signal: AbortSignal.timeout(2_000),
      });
      const table = (await res.json()) as { routes: Array<{ port: number; backends: RouteBackendLite[] }> };
      return table.routes.find((r) => r.port === port)?.backends ?? [];
    } catch {
      return undefined;
    }
  }

  async routerHealthy(): Promise<boolean> {
    try {
      return (await fetch(`http://127.0.0.1:${this.routerAdminPort}/health`, { signal: AbortSignal.timeout(2_000) }))
        .ok;
    } catch {
      return false;
    }
  }

  /**
   * Runs the real `sf` CLI against this platform, as an operator would. The deadline is long: a
   * PostgreSQL switchover reports only once the old primary runs as a standby again, which took
   * over 90 s at load average 40 (a CLI killed by the deadline exits 1 with no output).
   */
  sf(args: string[], timeoutMs = 300_000): Promise<CliResult> {
    const t0 = performance.now();
    return new Promise((done) => {
      execFile(
        process.execPath,
        [SF_SCRIPT, ...args],
        { env: this.env(), timeout: timeoutMs },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
          done({ code, output: `${stdout}${stderr}`.trim(), ms: performance.now() - t0 });
        },
      );
    });
  }

  /** Engine pids from the cells' actual hashes (remembered for `stop()`). */
  async refreshEnginePids(): Promise<Map<string, number>> {
    const byInstance = new Map<string, number>();
    try {
      for (const cell of this.cellNames) {
        const actual = await this.state.hgetall(KEYS.cell(cell).actual);
        for (const [id, text] of Object.entries(actual)) {
          const pid = (JSON.parse(text) as { pid: number | null }).pid;
          if (!pid) continue;
          byInstance.set(id, pid);
          this.enginePids.add(pid);
        }
      }
    } catch {
      // The state store is down or being restarted: keep what is known.
    }
    return byInstance;
  }

  /** Wall-clock `startedAt` of cell `name`'s registration; undefined when it has none (or the store is away). */
  protected async registeredAt(name: string): Promise<number | undefined | null> {
    try {
      const text = await this.state.get(KEYS.cell(name).registration);
      return text ? ((JSON.parse(text) as { startedAt?: number }).startedAt ?? undefined) : undefined;
    } catch {
      // The state store is away: nothing known, nothing excused.
      return null;
    }
  }

  async waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError = '';
    for (;;) {
      try {
        if (await check()) return;
      } catch (err) {
        lastError = (err as Error).message;
        if (lastError.includes('exited')) throw err;
      }
      if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs} ms ${lastError}`);
      await sleep(100);
    }
  }

  /** Engine processes (by /proc) whose working directory is inside this run's data directory. */
  protected enginesInDataDir(): number[] {
    const found: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const cwd = readlinkSync(`/proc/${entry}/cwd`);
        if (cwd.startsWith(`${this.dataDir}/`)) found.push(Number(entry));
      } catch {
        // Gone, or not ours to read.
      }
    }
    return found;
  }

  /** Engines still running (by pid, checked to still be an engine): how many there are. */
  protected runningEngines(): number[] {
    const pids = new Set([...this.enginePids, ...this.enginesInDataDir()]);
    return [...pids].filter((pid) => {
      try {
        return PG_OR_REDIS.test(readFileSync(`/proc/${pid}/cmdline`, 'latin1'));
      } catch {
        return false;
      }
    });
  }

  /**
   * SIGKILL of every engine this run ever saw: reported ones, and every engine whose working
   * directory is inside this run's data directory (one started after the last report, a rejoin or
   * a replacement replica, is in no report).
   */
  protected killEngines(): void {
    // Only a pid that still runs an engine: a pid the kernel reused belongs to someone else.
    for (const pid of this.runningEngines()) {
      for (const target of [-pid, pid]) {
        try {
          process.kill(target, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    }
  }
}
