/**
 * Network namespaces as stand-in hosts for partition tests. Each host is a namespace
 * joined to the root namespace by a veth pair on its own /24: the root side is 10.99.N.1, the
 * namespace side 10.99.N.2 with a default route back, so namespaces reach the root namespace and,
 * with forwarding on, each other. Processes run inside with `ip netns exec`.
 *
 * Cleanup is unconditional: `cleanup()` kills every process in the namespace and deletes it (which
 * deletes the veth pair too), and an exit hook does the same if a test run dies midway.
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export interface NetnsHost {
  /** Namespace name, e.g. `sf-t412-150`. */
  name: string;
  /** Address inside the namespace (10.99.N.2). */
  address: string;
  /** Address of the root namespace's end (10.99.N.1), the namespace's gateway. */
  gateway: string;
  /** Interface names: root side and namespace side of the veth pair. */
  vethRoot: string;
  vethNs: string;
  /** Starts a process inside the namespace; it is killed by `cleanup()`. */
  spawn(file: string, args: string[], options?: SpawnOptions): ChildProcess;
  /** Runs a command inside the namespace to completion and returns its stdout. */
  run(file: string, args: string[]): Promise<string>;
  cleanup(): Promise<void>;
}

const live = new Set<string>();
let forwardingBefore: string | undefined;
let exitHookInstalled = false;

function ip(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, (err, stdout, stderr) =>
      err ? reject(new Error(`ip ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout),
    );
  });
}

function deleteSync(name: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // Already deleted.
  }
  live.delete(name);
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const name of [...live]) deleteSync(name);
    if (forwardingBefore !== undefined) {
      try {
        execFileSync('sysctl', ['-qw', `net.ipv4.ip_forward=${forwardingBefore}`]);
      } catch {
        // Best effort on the way out.
      }
    }
  });
}

/** True when this process may create namespaces (root with CAP_NET_ADMIN and `ip` present). */
export async function netnsSupported(): Promise<boolean> {
  const probe = `sf-probe-${process.pid}`;
  try {
    await ip(['netns', 'add', probe]);
    await ip(['netns', 'del', probe]);
    return true;
  } catch {
    return false;
  }
}

/** Turns IPv4 forwarding on in the root namespace (restored on process exit) so namespaces reach each other. */
export function enableForwarding(): void {
  installExitHook();
  if (forwardingBefore === undefined)
    forwardingBefore = execFileSync('sysctl', ['-n', 'net.ipv4.ip_forward'], { encoding: 'utf8' }).trim();
  execFileSync('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
}

async function freeSubnet(): Promise<number> {
  const routes = await ip(['-4', 'route', 'show']);
  for (let i = 0; i < 200; i++) {
    const n = 100 + ((process.pid + i * 7) % 150);
    if (!routes.includes(`10.99.${n}.`)) return n;
  }
  throw new Error('no free 10.99.N.0/24 subnet for a test namespace');
}

export async function createNetnsHost(): Promise<NetnsHost> {
  installExitHook();
  const n = await freeSubnet();
  const name = `sf-t${process.pid % 10000}-${n}`;
  // Interface names are limited to 15 characters.
  const vethRoot = `sfr${process.pid % 10000}n${n}`.slice(0, 15);
  const vethNs = `sfn${process.pid % 10000}n${n}`.slice(0, 15);
  const address = `10.99.${n}.2`;
  const gateway = `10.99.${n}.1`;
  live.add(name);
  try {
    await ip(['netns', 'add', name]);
    await ip(['link', 'add', vethRoot, 'type', 'veth', 'peer', 'name', vethNs]);
    await ip(['link', 'set', vethNs, 'netns', name]);
    await ip(['addr', 'add', `${gateway}/24`, 'dev', vethRoot]);
    await ip(['link', 'set', vethRoot, 'up']);
    await ip(['-n', name, 'addr', 'add', `${address}/24`, 'dev', vethNs]);
    await ip(['-n', name, 'link', 'set', vethNs, 'up']);
    await ip(['-n', name, 'link', 'set', 'lo', 'up']);
    await ip(['-n', name, 'route', 'add', 'default', 'via', gateway]);
  } catch (err) {
    deleteSync(name);
    await ip(['link', 'del', vethRoot]).catch(() => undefined);
    throw err;
  }
  const children = new Set<ChildProcess>();
  return {
    name,
    address,
    gateway,
    vethRoot,
    vethNs,
    spawn(file, args, options = {}) {
      const child = spawn('ip', ['netns', 'exec', name, file, ...args], { stdio: 'ignore', ...options });
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    },
    run(file, args) {
      return ip(['netns', 'exec', name, file, ...args]);
    },
    async cleanup() {
      for (const child of children) child.kill('SIGKILL');
      deleteSync(name);
      // Deleting the namespace deletes the pair; this is for a half-made setup.
      await ip(['link', 'del', vethRoot]).catch(() => undefined);
    },
  };
}
