/**
 * The platform the fault checker attacks: what `sf up` starts (a state redis-server with an
 * append-only file, `sf control`, one `sf router`, N `sf cell`), every one a real process, but
 * started here one by one so that each can be killed and restarted on its own: this harness
 * plays the supervisor (the `processes` platform; fault-sf-up-platform.ts runs a real `sf up`).
 * It alone can run a cell in a network namespace, for the `cell-partition` fault.
 *
 * Cells run with a 1 s registration TTL (as test/helpers/service-cluster.ts) so a run of many
 * faults stays short, and without `--stop-instances-on-exit`, so engines outlive their cell agent
 * as they would under a supervisor. Every engine pid ever reported is remembered and killed at
 * `stop()`, even if the state store forgot it.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { createCellNetwork, type CellNetwork } from './fault-netns';
import {
  FaultPlatformBase,
  freeBlock,
  freeSinglePort,
  SF_SCRIPT,
  sleep,
  type ApiResponse,
  type CliResult,
  type InstanceViewLite,
  type PlatformMode,
  type RouteBackendLite,
  type ServiceViewLite,
} from './fault-platform-base';
import { startProcess, waitForPort, type ManagedProcess } from './processes';

export {
  SF_SCRIPT,
  type ApiResponse,
  type CliResult,
  type InstanceViewLite,
  type RouteBackendLite,
  type ServiceViewLite,
};

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

interface CellSlot {
  name: string;
  zone: string;
  portFrom: number;
  proc: ManagedProcess | undefined;
  /** Date.now() when the agent was last started. */
  startedAt: number;
}

const REDIS_BIN = 'redis-server';

export class FaultPlatform extends FaultPlatformBase {
  readonly mode: PlatformMode = 'processes';
  stateRedisPort = 0;
  private redisProc: ManagedProcess | undefined;
  private controlProc: ManagedProcess | undefined;
  private routerProc: ManagedProcess | undefined;
  private readonly cells: CellSlot[] = [];
  private readonly opts: Required<FaultPlatformOptions>;
  /** The network of the partitionable cell, when there is one. */
  private network: CellNetwork | undefined;

  constructor(options: FaultPlatformOptions = {}) {
    const opts = {
      cells: 3,
      cellTtlMs: 1_000,
      capacityMb: 4_096,
      logLevel: 'warn',
      logDir: '',
      partitionableCell: false,
      ...options,
    };
    super(opts);
    this.opts = opts;
  }

  get stateUrl(): string {
    return `redis://127.0.0.1:${this.stateRedisPort}`;
  }

  get cellNames(): string[] {
    return this.cells.map((c) => c.name);
  }

  protected cellDataDir(name: string): string {
    return join(this.dataDir, 'cells', name);
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
  async restartStateRedis(wipe: boolean): Promise<void> {
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

  async restartCell(name: string, downMs: number): Promise<string> {
    await this.killCell(name);
    await sleep(downMs);
    await this.startCell(name);
    return `restarted after ${downMs} ms`;
  }

  cellRunning(name: string): boolean {
    const p = this.cells.find((c) => c.name === name)?.proc;
    return p !== undefined && p.child.exitCode === null && p.child.signalCode === null;
  }

  async absentAgents(): Promise<Set<string>> {
    const absent = new Set<string>();
    for (const slot of this.cells) {
      if (!this.cellRunning(slot.name)) {
        absent.add(slot.name);
        continue;
      }
      const startedAt = await this.registeredAt(slot.name);
      if (startedAt === undefined || (startedAt !== null && startedAt < slot.startedAt - 1_000)) absent.add(slot.name);
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

  /** Output tails of the platform processes, for a report when something breaks. */
  logs(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const p of [this.redisProc, this.controlProc, this.routerProc, ...this.cells.map((c) => c.proc)])
      if (p) out[p.name] = p.output().slice(-4_000);
    return out;
  }

  async stop(): Promise<void> {
    await this.refreshEnginePids();
    const procs = [this.controlProc, this.routerProc, ...this.cells.map((c) => c.proc)];
    await Promise.all(procs.map((p) => p?.stop()));
    this.killEngines();
    this.state?.disconnect();
    await this.network?.close();
    await this.redisProc?.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
