/**
 * The `sf-up` platform of the fault checker: one real `sf up` (three cells, its own locked state
 * redis-server, control, router), started on free ports in a data directory of the run. Faults on
 * a component kill that component's own process, found in the pid file `sf up` keeps
 * (DATA/up-processes.json) and checked against /proc to be a live child of this `sf up`; its
 * supervisor (cli/supervisor.ts) starts it again, with its backoff. `restartSfUp` is the operator's
 * Ctrl-C and a new `sf up` on the same data directory.
 *
 * The checker reads the state store as `sf up`'s admin user (DATA/state-store/credentials).
 */
import { cpSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { readRedisCredentialsFile } from '../../common/redis-credentials';
import {
  FaultPlatformBase,
  freeBlock,
  freeSinglePort,
  SF_SCRIPT,
  sleep,
  type PlatformMode,
} from './fault-platform-base';
import { startProcess, type ManagedProcess } from './processes';

export interface SfUpPlatformOptions {
  /** @default 3 */
  cells?: number;
  /** Log level of the platform processes. @default 'warn' */
  logLevel?: string;
  /** When set, `sf up`'s output goes to `<logDir>/sf-up.log` (each component logs in DATA/logs). @default '' */
  logDir?: string;
}

/** What a stop and start of `sf up` did. */
export interface SfUpRestart {
  /** `sf up`'s exit code after the signal (null: killed, as it did not exit in time). */
  exitCode: number | null;
  stopMs: number;
  /** performance.now() when the new `sf up` was started. */
  startedAt: number;
  /** From the start to its "is up" banner. */
  readyMs: number;
  /** Components of the old `sf up` still running after it exited (they were killed). */
  leftoverComponents: string[];
  /** Engines still running once the old `sf up` had exited. */
  enginesLeftRunning: number;
}

/** How long `sf up` may take to stop everything after SIGINT (each component has 10 s, in four groups). */
const STOP_TIMEOUT_MS = 120_000;
/** How long start-up may take: each component has 90 s (cli/command-up.ts) on a loaded machine. */
const READY_TIMEOUT_MS = 300_000;
/** How long the supervisor may take to start a killed component again (its backoff is at most 10 s). */
const RESTART_TIMEOUT_MS = 60_000;

interface ProcStat {
  ppid: number;
  state: string;
  /** Start time in clock ticks after boot. */
  startTicks: number;
}

function procStat(pid: number): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0]!, ppid: Number(fields[1]), startTicks: Number(fields[19]) };
  } catch {
    return undefined;
  }
}

/** Boot time (s since the epoch), for process start times. */
function bootTimeSec(): number {
  const line = readFileSync('/proc/stat', 'latin1')
    .split('\n')
    .find((l) => l.startsWith('btime '));
  return Number(line?.split(' ')[1] ?? 0);
}

/** Linux's USER_HZ: /proc start times are in these ticks on every architecture Node runs on. */
const CLOCK_TICKS = 100;

export class SfUpFaultPlatform extends FaultPlatformBase {
  readonly mode: PlatformMode = 'sf-up';
  redisPort = 0;
  cellPortBase = 0;
  private up: ManagedProcess | undefined;
  private readonly cellCount: number;
  private readonly bootSec = bootTimeSec();
  /** The router pid whose start `routerUpAt` describes. */
  private routerPid: number | undefined;

  constructor(options: SfUpPlatformOptions = {}) {
    super({ logLevel: options.logLevel ?? 'warn', logDir: options.logDir ?? '' });
    this.cellCount = options.cells ?? 3;
  }

  /** `sf up --data-dir`. */
  get upDataDir(): string {
    return join(this.dataDir, 'up');
  }

  get cellNames(): string[] {
    return Array.from({ length: this.cellCount }, (_, i) => `cell-${i + 1}`);
  }

  /** The pid of `sf up` itself, while it runs. */
  get upPid(): number | undefined {
    const up = this.up;
    return up && up.child.exitCode === null && up.child.signalCode === null ? up.pid : undefined;
  }

  protected cellDataDir(name: string): string {
    return join(this.upDataDir, 'cells', name);
  }

  /** sf up serves control over HTTPS with a certificate from its platform CA (DATA/ca.pem). */
  protected override controlCaFile(): string {
    return join(this.upDataDir, 'ca.pem');
  }

  protected override env(): NodeJS.ProcessEnv {
    const env = super.env();
    // sf up runs its own store: an operator's SF_REDIS_URL would point it elsewhere.
    delete env.SF_REDIS_URL;
    return env;
  }

  private upArgs(): string[] {
    return [
      SF_SCRIPT,
      'up',
      '--data-dir',
      this.upDataDir,
      '--cells',
      String(this.cellCount),
      '--control-port',
      String(this.controlPort),
      '--router-admin-port',
      String(this.routerAdminPort),
      '--redis-port',
      String(this.redisPort),
      '--cell-port-base',
      String(this.cellPortBase),
      '--route-ports',
      `${this.routePortFrom}-${this.routePortFrom + 99}`,
      '--cell-metrics-port-base',
      '0',
    ];
  }

  async start(): Promise<void> {
    this.redisPort = await freeSinglePort(this.ports);
    this.controlPort = await freeSinglePort(this.ports);
    this.routerAdminPort = await freeSinglePort(this.ports);
    this.routePortFrom = await freeBlock(100, this.ports);
    this.cellPortBase = await freeBlock(100 * this.cellCount, this.ports);
    await this.startUp();
    const admin = await readRedisCredentialsFile(join(this.upDataDir, 'state-store', 'credentials', 'admin.json'));
    this.state = new Redis(`redis://127.0.0.1:${this.redisPort}`, {
      username: admin.username,
      password: admin.password,
      retryStrategy: () => 200,
      maxRetriesPerRequest: 2,
    });
    this.state.on('error', () => undefined);
  }

  /** Starts `sf up` and waits for its banner (every component started, every cell alive). */
  private async startUp(): Promise<number> {
    const t0 = performance.now();
    const up = this.keepLog(startProcess('sf-up', process.execPath, this.upArgs(), { env: this.env() }));
    this.up = up;
    await this.waitUntil(
      'sf up ready',
      async () => {
        if (up.child.exitCode !== null || up.child.signalCode !== null)
          throw new Error(`sf up exited: ${up.output().slice(-3_000)}`);
        return up.output().includes('Try next:');
      },
      READY_TIMEOUT_MS,
    );
    this.routerPid = this.componentPid('router');
    this.routerUpAt = performance.now();
    return performance.now() - t0;
  }

  /** name -> pid as `sf up` last wrote them (a pid may have exited since). */
  private recordedPids(): Record<string, number> {
    try {
      return JSON.parse(readFileSync(join(this.upDataDir, 'up-processes.json'), 'utf8')) as Record<string, number>;
    } catch {
      return {};
    }
  }

  /**
   * The running process of component `name` (`redis`, `control`, `router`, `cell-N`): the pid
   * `sf up` recorded, if it is still a live (not zombie) child of this `sf up`.
   */
  componentPid(name: string): number | undefined {
    const upPid = this.upPid;
    const pid = this.recordedPids()[name];
    if (upPid === undefined || pid === undefined) return undefined;
    const stat = procStat(pid);
    return stat && stat.ppid === upPid && stat.state !== 'Z' && stat.state !== 'X' ? pid : undefined;
  }

  /** Wall-clock ms when `pid` started. */
  private startedAtMs(pid: number): number | undefined {
    const stat = procStat(pid);
    return stat ? (this.bootSec + stat.startTicks / CLOCK_TICKS) * 1_000 : undefined;
  }

  /**
   * Signals component `name` and waits until the supervisor has started a new process for it;
   * returns the new pid and how long the component had no process.
   */
  private async killComponent(name: string, signal: NodeJS.Signals): Promise<{ pid: number; downMs: number }> {
    const pid = this.componentPid(name);
    if (pid === undefined) throw new Error(`sf up runs no ${name} process now`);
    const t0 = performance.now();
    process.kill(pid, signal);
    let fresh: number | undefined;
    await this.waitUntil(
      `sf up restarting ${name}`,
      async () => {
        fresh = this.componentPid(name);
        return fresh !== undefined && fresh !== pid;
      },
      RESTART_TIMEOUT_MS,
    );
    return { pid: fresh!, downMs: Math.round(performance.now() - t0) };
  }

  async restartCell(name: string, _downMs: number): Promise<string> {
    // The supervisor, not the checker, decides when the agent comes back.
    const { downMs } = await this.killComponent(name, 'SIGKILL');
    return `started again by sf up ${downMs} ms later`;
  }

  async restartControl(signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
    await this.killComponent('control', signal);
    await this.waitUntil(
      'control healthy',
      async () => (await this.controlFetch('/health', { signal: AbortSignal.timeout(2_000) })).ok,
      60_000,
    );
  }

  async restartRouter(): Promise<void> {
    this.routerUpAt = undefined;
    const { pid } = await this.killComponent('router', 'SIGKILL');
    await this.waitUntil('router healthy', () => this.routerHealthy(), 60_000);
    this.routerPid = pid;
    this.routerUpAt = performance.now();
  }

  override routerUpSince(): number | undefined {
    // A router the supervisor restarted on its own (it crashed) counts from its return too.
    const pid = this.componentPid('router');
    if (pid !== this.routerPid) {
      this.routerUpAt = undefined;
      if (pid !== undefined) {
        this.routerPid = pid;
        void this.waitUntil('router healthy', () => this.routerHealthy(), 60_000)
          .then(() => {
            if (this.routerPid === pid) this.routerUpAt = performance.now();
          })
          .catch(() => undefined);
      }
    }
    return this.routerUpAt;
  }

  /**
   * SIGKILL of the state redis-server; the supervisor starts it again on its append-only file.
   * `wipe` stops it first (SIGSTOP), deletes its files, then kills it, so that it comes back empty
   * with the same users (the ACL file is written by `sf up`, not kept by redis).
   */
  async restartStateRedis(wipe: boolean): Promise<void> {
    const pid = this.componentPid('redis');
    if (pid === undefined) throw new Error('sf up runs no redis process now');
    if (wipe) {
      process.kill(pid, 'SIGSTOP');
      const dir = join(this.upDataDir, 'redis');
      for (const entry of readdirSync(dir)) rmSync(join(dir, entry), { recursive: true, force: true });
    }
    await this.killComponent('redis', 'SIGKILL');
    await this.waitUntil('state store answering', async () => (await this.state.ping()) === 'PONG', 60_000);
  }

  async absentAgents(): Promise<Set<string>> {
    const absent = new Set<string>();
    for (const name of this.cellNames) {
      const pid = this.componentPid(name);
      const startedAt = pid === undefined ? undefined : this.startedAtMs(pid);
      if (startedAt === undefined) {
        absent.add(name);
        continue;
      }
      const registered = await this.registeredAt(name);
      if (registered === undefined || (registered !== null && registered < startedAt - 1_000)) absent.add(name);
    }
    return absent;
  }

  /**
   * Ctrl-C and a new `sf up` on the same data directory. `terminal`: SIGINT to the whole process
   * group, as a terminal sends it (every component gets it at the same time as `sf up`); else to
   * `sf up` alone, as `kill -INT` does.
   */
  async restartSfUp(terminal: boolean): Promise<SfUpRestart> {
    const up = this.up;
    if (!up || this.upPid === undefined) throw new Error('sf up is not running');
    await this.refreshEnginePids();
    const before = this.recordedPids();
    this.routerUpAt = undefined;
    const t0 = performance.now();
    process.kill(terminal ? -up.pid : up.pid, 'SIGINT');
    const exitCode = await Promise.race([up.exited, sleep(STOP_TIMEOUT_MS).then(() => 'timeout' as const)]);
    const stopMs = Math.round(performance.now() - t0);
    const leftoverComponents: string[] = [];
    if (exitCode === 'timeout') {
      process.kill(up.pid, 'SIGKILL');
      await up.exited;
    }
    // A component of the old sf up that still runs would hold its ports against the new one.
    for (const [name, pid] of Object.entries(before)) {
      const stat = procStat(pid);
      if (!stat || stat.state === 'Z' || stat.ppid === up.pid) continue;
      // Reparented: still that component only if it names this data directory (a reused pid does not).
      let cmdline: string;
      try {
        cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      } catch {
        continue;
      }
      if (!cmdline.includes(this.upDataDir)) continue;
      leftoverComponents.push(name);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone meanwhile.
      }
    }
    const enginesLeftRunning = this.runningEngines().length;
    const startedAt = performance.now();
    const readyMs = await this.startUp();
    return {
      exitCode: exitCode === 'timeout' ? null : exitCode,
      stopMs,
      startedAt,
      readyMs: Math.round(readyMs),
      leftoverComponents,
      enginesLeftRunning,
    };
  }

  logs(): Record<string, string> {
    const out: Record<string, string> = {};
    if (this.up) out['sf-up'] = this.up.output().slice(-4_000);
    const logs = join(this.upDataDir, 'logs');
    let files: string[];
    try {
      files = readdirSync(logs);
    } catch {
      return out;
    }
    for (const f of files) {
      try {
        out[f.replace(/\.log$/, '')] = readFileSync(join(logs, f), 'utf8').slice(-4_000);
      } catch {
        // Unreadable: left out.
      }
    }
    return out;
  }

  async stop(): Promise<void> {
    await this.refreshEnginePids();
    const up = this.up;
    if (up && this.upPid !== undefined) {
      process.kill(up.pid, 'SIGINT');
      const done = await Promise.race([up.exited, sleep(STOP_TIMEOUT_MS).then(() => 'timeout' as const)]);
      if (done === 'timeout') await up.stop();
    }
    this.killEngines();
    this.state?.disconnect();
    // The components log to DATA/logs: kept in the log directory, if there is one, before the data goes.
    if (this.logDir) {
      try {
        cpSync(join(this.upDataDir, 'logs'), this.logDir, { recursive: true, force: true });
      } catch {
        // No logs written yet.
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
