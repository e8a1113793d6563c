/**
 * Starting the router the way an operator does (`sf router --routes FILE --admin ADDR`), from a
 * generated route file, and reading back from /health which relay path it actually runs.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  freePort,
  makeTempDir,
  runToCompletion,
  startProcess,
  waitForHttp,
  waitForPort,
  type ManagedProcess,
} from './processes';
import type { ProxiedService } from './haproxy';

export interface RouterOptions {
  services: readonly ProxiedService[];
  /** `SF_RELAY`: which relay path to ask for; the router may fall back, /health says. */
  relay: 'js' | 'native';
  /** `--workers`; undefined leaves the flag out (the CLI may not support it yet). */
  workers?: number;
  /** `--threads` (native relay threads); undefined leaves the flag out (older builds lack it). */
  threads?: number;
  /** RLIMIT_NOFILE for the router process. */
  fileLimit?: number;
  /** Another build's `sf.js` (an A/B comparison of two builds); default this build's. */
  cliPath?: string;
  /** More environment for the router (e.g. `SF_ROUTER_FD_RESERVE`). */
  env?: NodeJS.ProcessEnv;
}

export interface RunningRouter {
  proc: ManagedProcess;
  adminPort: number;
  /** The /health JSON as served once ready. */
  health: Record<string, unknown>;
  /** The relay path /health reports (`relay` field), or 'unknown'. */
  relay: string;
}

/** dist/cli/sf.js, found from dist/bench/lib/. */
export function sfCliPath(): string {
  return join(__dirname, '..', '..', 'cli', 'sf.js');
}

export function routerCliAvailable(): boolean {
  return existsSync(sfCliPath());
}

/** Whether `sf router --help` (of this build, or of the CLI at `cliPath`) documents `flag`. */
export async function routerSupportsFlag(flag: string, cliPath: string = sfCliPath()): Promise<boolean> {
  if (!existsSync(cliPath)) return false;
  const result = await runToCompletion('sf router --help', process.execPath, [cliPath, 'router', '--help'], {
    timeoutMs: 15_000,
  });
  return `${result.stdout}${result.stderr}`.includes(flag);
}

export function routeFile(services: readonly ProxiedService[]): string {
  return JSON.stringify({
    version: 1,
    routes: services.map((s) => ({
      port: s.listenPort,
      mode: 'primary',
      backends: [{ host: s.targetHost, port: s.targetPort }],
    })),
  });
}

export async function startRouter(name: string, options: RouterOptions): Promise<RunningRouter> {
  const dir = makeTempDir('sf-bench-router-');
  const routesPath = join(dir, 'routes.json');
  writeFileSync(routesPath, routeFile(options.services));
  const adminPort = await freePort();
  const args = [options.cliPath ?? sfCliPath(), 'router', '--routes', routesPath, '--admin', `127.0.0.1:${adminPort}`];
  if (options.workers !== undefined) args.push('--workers', String(options.workers));
  if (options.threads !== undefined) args.push('--threads', String(options.threads));
  const proc = startProcess(name, process.execPath, args, {
    env: { ...process.env, ...options.env, SF_RELAY: options.relay },
    fileLimit: options.fileLimit ?? 65536,
  });
  const body = await waitForHttp(`http://127.0.0.1:${adminPort}/health`, proc);
  for (const s of options.services) await waitForPort(s.listenPort, proc);
  let health: Record<string, unknown>;
  try {
    health = JSON.parse(body) as Record<string, unknown>;
  } catch {
    health = { raw: body };
  }
  const relay = typeof health.relay === 'string' ? health.relay : 'unknown';
  return { proc, adminPort, health, relay };
}
