/**
 * HAProxy (Debian's 2.6) in TCP mode as the reference load balancer: one frontend per relayed
 * service, each with the same single backend server the router uses.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, runToCompletion, startProcess, waitForPort, type ManagedProcess } from './processes';

export interface ProxiedService {
  /** Frontend name, e.g. "redis". */
  name: string;
  listenPort: number;
  targetHost: string;
  targetPort: number;
}

export interface HaproxyOptions {
  services: readonly ProxiedService[];
  /** `nbthread`; matched to the router's worker count so the columns compare equal CPU. */
  threads: number;
  /**
   * `option splice-auto`: HAProxy moves bytes with splice(2) when it judges it worthwhile,
   * the same technique as the router's native relay.
   */
  splice: boolean;
  /** `maxconn`: clients HAProxy holds at once (two descriptors each under RLIMIT_NOFILE). @default 4000 */
  maxconn?: number;
}

export function haproxyConfig(options: HaproxyOptions): string {
  const lines = [
    'global',
    `  nbthread ${options.threads}`,
    // Two descriptors per relayed connection (four with splice pipes) must fit under RLIMIT_NOFILE, which may be capped at 20000.
    `  maxconn ${options.maxconn ?? 4000}`,
    '',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    // Idle timeouts far above any sample length: the router's defaults do not cut idle pairs either.
    '  timeout client 1h',
    '  timeout server 1h',
    ...(options.splice ? ['  option splice-auto'] : []),
    '',
  ];
  for (const s of options.services) {
    lines.push(
      `frontend fe_${s.name}`,
      `  bind 127.0.0.1:${s.listenPort}`,
      `  default_backend be_${s.name}`,
      '',
      `backend be_${s.name}`,
      `  server s1 ${s.targetHost}:${s.targetPort}`,
      '',
    );
  }
  return lines.join('\n');
}

export async function startHaproxy(name: string, options: HaproxyOptions): Promise<ManagedProcess> {
  const dir = makeTempDir('sf-bench-haproxy-');
  const configPath = join(dir, 'haproxy.cfg');
  writeFileSync(configPath, haproxyConfig(options));
  // -db keeps it in the foreground so the harness owns the process; -W is not needed for one run.
  const proc = startProcess(name, 'haproxy', ['-db', '-f', configPath], { fileLimit: 65536 });
  for (const s of options.services) await waitForPort(s.listenPort, proc);
  return proc;
}

export async function haproxyVersion(): Promise<string> {
  const result = await runToCompletion('haproxy', 'haproxy', ['-v']);
  return result.stdout.split('\n')[0].trim();
}
