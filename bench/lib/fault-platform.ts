/**
 * The platform the fault checker attacks: what `sf up` starts (a state redis-server with an
 * append-only file, `sf control`, one `sf router`, N `sf cell`), every one a real process, but
 * started here one by one so that each can be killed and restarted on its own. `sf up` today
 * stops everything when one child dies, which would end the run at the
 * first fault; this harness plays the supervisor `sf up` is meant to become.
 *
 * Cells run with a 1 s registration TTL (as test/helpers/service-cluster.ts) so a run of many
 * faults stays short, and without `--stop-instances-on-exit`, so engines outlive their cell agent
 * as they would under a supervisor. Every engine pid ever reported is remembered and killed at
 * `stop()`, even if the state store forgot it.
 */
import { execFile } from 'node:child_process';
import { appendFileSync, chmodSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { keyLayout } from '../../protocol/keys';
import { createCellNetwork, type CellNetwork } from './fault-netns';
import { makeTempDir, startProcess, waitForPort, type ManagedProcess } from './processes';

/** The `sf` entry point of this build (dist/cli/sf.js). */
export const SF_SCRIPT = resolve(__dirname, '..', '..', 'cli', 'sf.js');

export interface FaultPlatformOptions {
  /** @default 3 */
  cells?: number;
  /** Cell registration TTL; the time control needs to see a dead cell. @default 1000 */
  cellTtlMs?: number;
  /** @default 4096 */
  capacityMb?: number;
  /** Log level of the platform processes. @default 'warn' */
  logLevel?: string;
  /** When set, every platform process appends its whole output to `<logDir>/<name>.log`. @default '' */
  logDir?: string;
  /**
   * Runs the last cell in a network namespace of its own so that it can be partitioned
   * (bench/lib/fault-netns.ts); the other cells then listen on the host's address. @default false
   */
  partitionableCell?: boolean;
}

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

interface CellSlot {
  name: string;
  zone: string;
  portFrom: number;
  proc: ManagedProcess | undefined;
  /** Date.now() when the agent was last started. */
  startedAt: number;
}

const KEYS = keyLayout();
const REDIS_BIN = 'redis-server';
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
async function freeBlock(size: number, taken: Set<number>): Promise<number> {
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

async function freeSinglePort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = 27_000 + Math.floor(Math.random() * 1_000);
    if (taken.has(port)) continue;
    if (await canBind(port)) {
      taken.add(port);
      return port;
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class FaultPlatform {
  readonly token = `fault-admin-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}`;
  readonly dataDir: string;
  stateRedisPort = 0;
  controlPort = 0;
  routerAdminPort = 0;
  routePortFrom = 0;
  state!: Redis;
  private redisProc: ManagedProcess | undefined;
  private controlProc: ManagedProcess | undefined;
  private routerProc: ManagedProcess | undefined;
  /** performance.now() when the router last answered its health check after a start; undefined while down. */
  private routerUpAt: number | undefined;
  private readonly cells: CellSlot[] = [];
  private readonly ports = new Set<number>();
  /** Every engine pid a cell ever reported, so none outlives the run. */
  readonly enginePids = new Set<number>();
  private readonly opts: Required<FaultPlatformOptions>;
  /** The network of the partitionable cell, when there is one. */
  private network: CellNetwork | undefined;

  constructor(options: FaultPlatformOptions = {}) {
    this.opts = {
      cells: 3,
      cellTtlMs: 1_000,
      capacityMb: 4_096,
      logLevel: 'warn',
      logDir: '',
      partitionableCell: false,
      ...options,
    };
    if (this.opts.logDir) mkdirSync(this.opts.logDir, { recursive: true });
    this.dataDir = makeTempDir('sf-fault-');
    // PostgreSQL runs as the postgres user when this runs as root: it must reach its volume.
    chmodSync(this.dataDir, 0o755);
  }

  /** Keeps a process's whole output in the log directory, if there is one. */
  private keepLog(proc: ManagedProcess): ManagedProcess {
    const dir = this.opts.logDir;
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

  get controlUrl(): string {
    return `http://127.0.0.1:${this.controlPort}`;
  }

  get stateUrl(): string {
    return `redis://127.0.0.1:${this.stateRedisPort}`;
  }

  get cellNames(): string[] {
    return this.cells.map((c) => c.name);
  }

  private env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      SF_API_TOKEN: this.token,
      SF_CONTROL_URL: this.controlUrl,
      // Token files land here, never in the operator's home.
      SF_HOME: join(this.dataDir, 'home'),
      SF_LOG_LEVEL: this.opts.logLevel,
    };
  }

  async start(): Promise<void> {
    this.stateRedisPort = await freeSinglePort(this.ports);
    this.controlPort = await freeSinglePort(this.ports);
    this.routerAdminPort = await freeSinglePort(this.ports);
    this.routePortFrom = await freeBlock(100, this.ports);
    await this.startStateRedis();
    this.state = new Redis(this.stateUrl, { retryStrategy: () => 200, maxRetriesPerRequest: 2 });
    this.state.on('error', () => undefined);
    await this.startControl();
    const groups = await this.api<Array<{ guid: string }>>('GET', '/routing/v1/router_groups?name=default');
    const guid = groups.body[0]?.guid;
    if (!guid) throw new Error('control has no default router group');
    const put = await this.api('PUT', `/routing/v1/router_groups/${guid}`, {
      reservable_ports: `${this.routePortFrom}-${this.routePortFrom + 99}`,
    });
    if (put.status >= 300) throw new Error(`setting route ports: ${put.status} ${JSON.stringify(put.body)}`);
    await this.startRouter();
    if (this.opts.partitionableCell) {
      const net = await createCellNetwork(this.stateRedisPort);
      if (typeof net === 'string') throw new Error(`a partitionable cell needs a namespace: ${net}`);
      this.network = net;
    }
    for (let n = 1; n <= this.opts.cells; n++) {
      const slot: CellSlot = {
        name: `cell-${n}`,
        zone: `z${n}`,
        portFrom: await freeBlock(100, this.ports),
        proc: undefined,
        startedAt: 0,
      };
      this.cells.push(slot);
      await this.startCell(slot.name);
    }
    await this.waitUntil('all cells alive', async () => (await this.aliveCells()).length === this.opts.cells, 30_000);
  }

  /** The state store, with an append-only file like `sf up`'s, so a restart keeps its data. */
  async startStateRedis(): Promise<void> {
    const dir = join(this.dataDir, 'state-redis');
    mkdirSync(dir, { recursive: true });
    this.redisProc = this.keepLog(
      startProcess(
        'state-redis',
        REDIS_BIN,
        ['--port', String(this.stateRedisPort), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes'],
        { env: process.env },
      ),
    );
    await waitForPort(this.stateRedisPort, this.redisProc, 10_000);
  }

  /** SIGKILL of the state store, then a start on the same port; `wipe` deletes its files first. */
  async restartStateRedis(wipe = false): Promise<void> {
    if (this.redisProc) {
      process.kill(this.redisProc.pid, 'SIGKILL');
      await this.redisProc.exited;
    }
    if (wipe) rmSync(join(this.dataDir, 'state-redis'), { recursive: true, force: true });
    await this.startStateRedis();
  }

  async startControl(): Promise<void> {
    this.controlProc = this.keepLog(
      startProcess(
        'control',
        process.execPath,
        [
          SF_SCRIPT,
          'control',
          '--listen',
          `127.0.0.1:${this.controlPort}`,
          '--redis',
          this.stateUrl,
          // As `sf up` does: the leader keeps a copy of control's state here and restores it when
          // the store comes back empty or older.
          '--data-dir',
          join(this.dataDir, 'control'),
        ],
        { env: this.env() },
      ),
    );
    const proc = this.controlProc;
    await this.waitUntil(
      'control healthy',
      async () => {
        if (proc.child.exitCode !== null) throw new Error(`control exited: ${proc.output().slice(-2000)}`);
        return (await fetch(`${this.controlUrl}/health`)).ok;
      },
      20_000,
    );
  }

  /** Stops control (SIGKILL: its leader lock expires; SIGTERM: it releases it) and starts it again. */
  async restartControl(signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
    if (this.controlProc) {
      process.kill(this.controlProc.pid, signal);
      await this.controlProc.exited;
    }
    await this.startControl();
  }

  async startRouter(): Promise<void> {
    this.routerProc = this.keepLog(
      startProcess(
        'router',
        process.execPath,
        [
          SF_SCRIPT,
          'router',
          '--redis',
          this.stateUrl,
          '--router-group',
          'default',
          '--admin',
          `127.0.0.1:${this.routerAdminPort}`,
          '--cache-file',
          join(this.dataDir, 'router-routes.json'),
        ],
        { env: this.env() },
      ),
    );
    await this.waitUntil(
      'router healthy',
      async () => (await fetch(`http://127.0.0.1:${this.routerAdminPort}/health`)).ok,
      20_000,
    );
    this.routerUpAt = performance.now();
  }

  /** When the router came back after its last start; undefined while it is down or starting. */
  routerUpSince(): number | undefined {
    return this.routerUpAt;
  }

  async restartRouter(): Promise<void> {
    this.routerUpAt = undefined;
    if (this.routerProc) {
      process.kill(this.routerProc.pid, 'SIGKILL');
      await this.routerProc.exited;
    }
    await this.startRouter();
  }

  async startCell(name: string): Promise<void> {
    const slot = this.cells.find((c) => c.name === name);
    if (!slot) throw new Error(`no cell ${name}`);
    slot.startedAt = Date.now();
    const net = this.network;
    const inNamespace = net !== undefined && name === this.partitionableCellName;
    // PostgreSQL trusts the platform's replication user on loopback only, unless told otherwise.
    const hostArgs = net
      ? [
          '--listen-host',
          inNamespace ? net.host.address : net.rootAddress,
          '--trust-cidr',
          `${net.host.address}/32`,
          '--trust-cidr',
          `${net.host.gateway}/32`,
          '--trust-cidr',
          `${net.rootAddress}/32`,
        ]
      : [];
    const [command, prefix] = inNamespace
      ? ['ip', ['netns', 'exec', net.host.name, process.execPath]]
      : [process.execPath, []];
    slot.proc = this.keepLog(
      startProcess(
        name,
        command,
        [
          ...prefix,
          SF_SCRIPT,
          'cell',
          ...hostArgs,
          '--name',
          name,
          '--zone',
          slot.zone,
          '--capacity-mb',
          String(this.opts.capacityMb),
          '--redis',
          inNamespace ? net.redisUrl : this.stateUrl,
          '--data-dir',
          join(this.dataDir, 'cells', name),
          '--port-range',
          `${slot.portFrom}-${slot.portFrom + 99}`,
          '--heartbeat-ms',
          String(Math.max(100, Math.floor(this.opts.cellTtlMs / 5))),
          '--heartbeat-ttl-ms',
          String(this.opts.cellTtlMs),
        ],
        { env: this.env() },
      ),
    );
  }

  /** The cell in a namespace of its own, if the platform has one. */
  get partitionableCellName(): string | undefined {
    return this.network ? `cell-${this.opts.cells}` : undefined;
  }

  /** Cuts the partitionable cell's link for `ms`, then heals it. */
  async partitionCell(ms: number): Promise<void> {
    const net = this.network;
    if (!net) throw new Error('no partitionable cell (FaultPlatformOptions.partitionableCell)');
    await net.cut();
    try {
      await sleep(ms);
    } finally {
      await net.heal();
    }
  }

  /** SIGKILL of the cell agent only: its engines keep running (an agent crash, not a host loss). */
  async killCell(name: string): Promise<void> {
    const slot = this.cells.find((c) => c.name === name);
    if (!slot?.proc) return;
    process.kill(slot.proc.pid, 'SIGKILL');
    await slot.proc.exited;
    slot.proc = undefined;
  }

  cellRunning(name: string): boolean {
    const p = this.cells.find((c) => c.name === name)?.proc;
    return p !== undefined && p.child.exitCode === null && p.child.signalCode === null;
  }

  /**
   * Cells whose agent is not back: not running, or started but not yet registered (an agent
   * registers only after it has re-adopted its engines and judged their roles). Nothing on such
   * a cell can demote an engine that outlived its agent.
   */
  async absentAgents(): Promise<Set<string>> {
    const absent = new Set<string>();
    for (const slot of this.cells) {
      if (!this.cellRunning(slot.name)) {
        absent.add(slot.name);
        continue;
      }
      try {
        const text = await this.state.get(KEYS.cell(slot.name).registration);
        const startedAt = text ? (JSON.parse(text) as { startedAt?: number }).startedAt : undefined;
        if (startedAt === undefined || startedAt < slot.startedAt - 1_000) absent.add(slot.name);
      } catch {
        // The state store is away: nothing known, nothing excused.
      }
    }
    return absent;
  }

  /**
   * What a restart of `sf up` would do once it supervises instead of stopping everything:
   * control, router and cells stopped (SIGTERM) and started again; engines and the state store
   * keep running.
   */
  async restartPlatformProcesses(): Promise<void> {
    this.routerUpAt = undefined;
    const procs = [this.controlProc, this.routerProc, ...this.cells.map((c) => c.proc)].filter(
      (p): p is ManagedProcess => p !== undefined,
    );
    await Promise.all(
      procs.map(async (p) => {
        if (p.child.exitCode === null && p.child.signalCode === null) process.kill(p.pid, 'SIGTERM');
        const timer = setTimeout(() => process.kill(p.pid, 'SIGKILL'), 10_000);
        await p.exited;
        clearTimeout(timer);
      }),
    );
    await this.startControl();
    await this.startRouter();
    for (const c of this.cells) await this.startCell(c.name);
  }

  async aliveCells(): Promise<string[]> {
    const res = await this.api<{ resources: Array<{ name: string; alive: boolean }> }>('GET', '/v3/cells');
    return res.status === 200 ? res.body.resources.filter((c) => c.alive).map((c) => c.name) : [];
  }

  async api<T = unknown>(method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<ApiResponse<T>> {
    const res = await fetch(`${this.controlUrl}${path}`, {
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
      const res = await fetch(`http://127.0.0.1:${this.routerAdminPort}/routes`, {
        signal: AbortSignal.timeout(2_000),
      });
      const table = (await res.json()) as { routes: Array<{ port: number; backends: RouteBackendLite[] }> };
      return table.routes.find((r) => r.port === port)?.backends ?? [];
    } catch {
      return undefined;
    }
  }

  /** Runs the real `sf` CLI against this platform, as an operator would. */
  sf(args: string[], timeoutMs = 90_000): Promise<CliResult> {
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
      for (const cell of this.cells) {
        const actual = await this.state.hgetall(KEYS.cell(cell.name).actual);
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

  /** Output tails of the platform processes, for a report when something breaks. */
  logs(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const p of [this.redisProc, this.controlProc, this.routerProc, ...this.cells.map((c) => c.proc)])
      if (p) out[p.name] = p.output().slice(-4_000);
    return out;
  }

  /** Engine processes (by /proc) whose working directory is inside this run's data directory. */
  private enginesInDataDir(): number[] {
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

  async stop(): Promise<void> {
    await this.refreshEnginePids();
    const procs = [this.controlProc, this.routerProc, ...this.cells.map((c) => c.proc)];
    await Promise.all(procs.map((p) => p?.stop()));
    // An engine started after the last report (a rejoin, a replacement replica) is in no report:
    // every engine whose working directory is inside this run's data directory is ours too.
    for (const pid of this.enginesInDataDir()) this.enginePids.add(pid);
    for (const pid of this.enginePids) {
      // Only a pid that still runs an engine: a pid the kernel reused belongs to someone else.
      let cmdline: string;
      try {
        cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      } catch {
        continue;
      }
      if (!PG_OR_REDIS.test(cmdline)) continue;
      for (const target of [-pid, pid]) {
        try {
          process.kill(target, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    }
    this.state?.disconnect();
    await this.network?.close();
    await this.redisProc?.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
