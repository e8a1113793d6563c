/**
 * Starting and stopping the peer processes a benchmark needs (redis-server, iperf3, HAProxy, the
 * router, helper proxies), with one guarantee: every process started here is stopped when the
 * benchmark ends, whether it finishes, throws, or is interrupted with Ctrl-C.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ManagedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Everything the process wrote to stdout and stderr so far (the tail is kept for errors). */
  output(): string;
  /** Resolves once the process has exited; never rejects. */
  readonly exited: Promise<number | null>;
  stop(): Promise<void>;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /**
   * Raise RLIMIT_NOFILE for the child to this value by starting it through `sh -c 'ulimit -n'`,
   * because Node cannot change its own or a child's limits.
   */
  fileLimit?: number;
}

const OUTPUT_TAIL_CHARS = 64 * 1024;
const running = new Set<ManagedProcess>();
const tempDirs = new Set<string>();
let exitHooksInstalled = false;

function quote(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * Starts `command` in its own process group, so that stopping it also stops anything it
 * started in turn (router workers, the shell used to raise file limits).
 */
export function startProcess(
  name: string,
  command: string,
  args: string[],
  options: StartOptions = {},
): ManagedProcess {
  installExitHooks();
  const spawnOptions: SpawnOptions = {
    cwd: options.cwd,
    env: options.env ?? process.env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  };
  const child =
    options.fileLimit === undefined
      ? spawn(command, args, spawnOptions)
      : spawn(
          'sh',
          ['-c', `${raiseFileLimit(options.fileLimit)} && exec ${[command, ...args].map(quote).join(' ')}`],
          spawnOptions,
        );
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  let output = '';
  const append = (chunk: Buffer): void => {
    output += chunk.toString('utf8');
    if (output.length > OUTPUT_TAIL_CHARS * 2) output = output.slice(-OUTPUT_TAIL_CHARS);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', (err) => {
      append(Buffer.from(String(err)));
      resolve(null);
    });
  });
  const pid = child.pid;
  const managed: ManagedProcess = {
    name,
    child,
    pid,
    output: () => output.slice(-OUTPUT_TAIL_CHARS),
    exited,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        running.delete(managed);
        return;
      }
      killGroup(pid, 'SIGTERM');
      const timer = setTimeout(() => killGroup(pid, 'SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
      // Children of the group (router workers) may outlive the leader briefly.
      killGroup(pid, 'SIGKILL');
      running.delete(managed);
    },
  };
  running.add(managed);
  void exited.then(() => {
    if (child.stdout) child.stdout.removeAllListeners('data');
  });
  return managed;
}

/**
 * Shell that raises the soft RLIMIT_NOFILE to `wanted`, or to the hard limit where that is
 * lower: containers often cap the hard limit and withhold CAP_SYS_RESOURCE to lift it.
 */
function raiseFileLimit(wanted: number): string {
  return `{ ulimit -n ${wanted} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }`;
}

/** The hard RLIMIT_NOFILE children can be given, read through the shell (Node has no getrlimit). */
export async function hardFileLimit(): Promise<number> {
  const result = await runToCompletion('ulimit', 'sh', ['-c', 'ulimit -Hn']);
  const text = result.stdout.trim();
  return text === 'unlimited' ? Number.POSITIVE_INFINITY : Number(text);
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  // 'exit' handlers must be synchronous: SIGKILL every group still running.
  process.on('exit', () => {
    for (const p of running) killGroup(p.pid, 'SIGKILL');
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping ${running.size} process(es)\n`);
      void stopAll().finally(() => process.exit(130));
    });
  }
}

/** A temporary directory removed together with the processes. */
export function makeTempDir(prefix: string): string {
  installExitHooks();
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** `SF_BENCH_PORTS=FROM-TO` moves the range, so runs side by side on one host cannot collide. */
const [PORT_RANGE_START, PORT_RANGE_END] = ((): [number, number] => {
  const m = /^(\d+)-(\d+)$/.exec(process.env.SF_BENCH_PORTS ?? '');
  const from = m ? Number(m[1]) : 27000;
  const to = m ? Number(m[2]) : 27999;
  return from > 0 && from <= to && to < 65536 ? [from, to] : [27000, 27999];
})();
const handedOut = new Set<number>();

/**
 * A free loopback port in 27000-27999 (or `SF_BENCH_PORTS`), away from the project's defaults
 * (7600/7601, 16000-16999) and from other processes' test ports; a random start keeps parallel
 * runs apart.
 */
export async function freePort(): Promise<number> {
  const span = PORT_RANGE_END - PORT_RANGE_START + 1;
  const start = Math.floor(Math.random() * span);
  for (let i = 0; i < span; i++) {
    const port = PORT_RANGE_START + ((start + i) % span);
    if (handedOut.has(port)) continue;
    if (await canListen(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port in ${PORT_RANGE_START}-${PORT_RANGE_END}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function tryConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function describeExit(proc: ManagedProcess): Error {
  return new Error(`${proc.name} exited before it was ready:\n${proc.output().slice(-4000)}`);
}

/** Waits until `port` accepts connections, failing early if `proc` exits first. */
export async function waitForPort(
  port: number,
  proc: ManagedProcess | undefined,
  timeoutMs = 10_000,
  host = '127.0.0.1',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc && (proc.child.exitCode !== null || proc.child.signalCode !== null)) throw describeExit(proc);
    if (await tryConnect(host, port)) return;
    await sleep(50);
  }
  throw new Error(`${proc?.name ?? 'port'} ${host}:${port} not accepting connections after ${timeoutMs} ms`);
}

export interface HttpResult {
  status: number;
  body: string;
}

export function httpGetText(url: string, timeoutMs = 2000): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${url} timed out`)));
    req.once('error', reject);
  });
}

/** Polls `url` until it answers 200, failing early if `proc` exits first; returns the body. */
export async function waitForHttp(url: string, proc: ManagedProcess | undefined, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (proc && (proc.child.exitCode !== null || proc.child.signalCode !== null)) throw describeExit(proc);
    try {
      const res = await httpGetText(url);
      if (res.status === 200) return res.body;
      last = `status ${res.status}`;
    } catch (err) {
      last = String(err);
    }
    await sleep(100);
  }
  throw new Error(`${url} not healthy after ${timeoutMs} ms (${last})`);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a short-lived command to completion (the load generators), tracked like the others. */
export async function runToCompletion(
  name: string,
  command: string,
  args: string[],
  options: StartOptions & { timeoutMs?: number } = {},
): Promise<RunResult> {
  installExitHooks();
  const child = spawn(command, args, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  const pid = child.pid;
  const tracked: ManagedProcess = {
    name,
    child,
    pid,
    output: () => '',
    exited: once(child, 'exit').then(([code]) => code as number | null),
    stop: async () => killGroup(pid, 'SIGKILL'),
  };
  running.add(tracked);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const timer =
    options.timeoutMs === undefined ? undefined : setTimeout(() => killGroup(pid, 'SIGKILL'), options.timeoutMs);
  const [code] = (await once(child, 'close')) as [number | null];
  if (timer) clearTimeout(timer);
  running.delete(tracked);
  return { code, stdout, stderr };
}

export { sleep };
