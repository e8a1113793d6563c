/**
 * Runs the real `sf` executable as a child process, as an operator would, and stops it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { eventually } from './tcp-client';

export const SF_BIN = join(__dirname, '..', '..', 'cli', 'sf.js');

export interface SfProcess {
  child: ChildProcess;
  output(): string;
  /** Resident set size of the process in bytes, from /proc. */
  rss(): Promise<number>;
  stop(): Promise<void>;
}

export function runSf(args: string[], env: NodeJS.ProcessEnv = {}): SfProcess {
  const child = spawn(process.execPath, [SF_BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    output: () => out,
    async rss() {
      const { readFile } = await import('node:fs/promises');
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      return kb * 1024;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Runs `sf` to completion and returns its exit code and output. */
export function runSfToExit(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; output: string }> {
  const p = runSf(args, env);
  return new Promise((resolve) => p.child.once('exit', (code) => resolve({ code, output: p.output() })));
}

/** Waits until the admin endpoint answers /health with 200. */
export async function waitForHealth(adminPort: number, timeoutMs = 10_000): Promise<void> {
  await eventually(
    async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${adminPort}/health`);
        return res.status === 200;
      } catch {
        return false;
      }
    },
    timeoutMs,
    `router admin on ${adminPort} healthy`,
  );
}

/** The token test routers' admin endpoints take: tests start routers with it as SF_API_TOKEN. */
export const ROUTER_ADMIN_TOKEN = 'test-router-admin-token-0123456789';

/** GET a router admin path that needs the token (`/routes`, `/metrics`), as text. */
export async function routerAdminText(adminPort: number, path: string, token = ROUTER_ADMIN_TOKEN): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${adminPort}${path}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(10_000),
  });
  if (!res.ok) throw new Error(`router admin ${path} answered ${res.status}`);
  return res.text();
}

/** GET a router admin path that needs the token, as JSON. */
export async function routerAdminJson<T>(adminPort: number, path: string, token = ROUTER_ADMIN_TOKEN): Promise<T> {
  return JSON.parse(await routerAdminText(adminPort, path, token)) as T;
}
