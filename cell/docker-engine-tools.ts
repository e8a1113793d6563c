/**
 * `EngineTools` for the docker executor: an engine's helpers (initdb, pg_basebackup, pg_rewind,
 * pg_ctl, psql) run from its image, never from the host. While the instance's container runs
 * they run in it (`docker exec`); before it exists (first-time preparation, a rewind) in a
 * one-shot container of the same image with the same bind mount and host network
 * (`docker run --rm`). Both go through the docker CLI, which streams stdin and stdout; secrets
 * reach it as environment variable names only (`-e PGPASSWORD`), never as values in argv.
 */
import type { EngineTools, ToolOptions } from './engine';
import { runCommand, type RunAs } from './run-command';

export interface ContainerToolsOptions {
  socketPath: string;
  image: string;
  /** The engine's user inside the image, by name. */
  user: string;
  owner: RunAs | undefined;
  volumeDir: string;
  /** The instance's running container, if any. */
  container: () => string | undefined;
}

/**
 * Added to a tool's time bound when it runs through the docker CLI: starting a process in a
 * container (the CLI, the daemon, runc entering the namespaces) costs 0.1-0.5 s on an idle host
 * and seconds on a loaded one, which a bound meant for the engine (a 2 s health query) must not
 * count, or a busy host reads as a sick engine and fails it over.
 * @default 3000
 */
export const DOCKER_EXEC_ALLOWANCE_MS = 3_000;

/** The docker CLI against one daemon, with a clean environment plus `env`. */
export function dockerCli(socketPath: string, args: string[], options: ToolOptions = {}): Promise<string> {
  return runCommand('docker', ['-H', `unix://${socketPath}`, ...args], { timeoutMs: 60_000, ...options });
}

export class ContainerTools implements EngineTools {
  readonly owner: RunAs | undefined;

  constructor(private readonly options: ContainerToolsOptions) {
    this.owner = options.owner;
  }

  run(name: string, args: string[], options: ToolOptions = {}): Promise<string> {
    const { image, user, volumeDir, socketPath } = this.options;
    const envArgs = Object.keys(options.env ?? {}).flatMap((k) => ['-e', k]);
    const stdin = options.input !== undefined ? ['-i'] : [];
    const container = this.options.container();
    const argv = container
      ? ['exec', ...stdin, '-u', user, ...envArgs, container, name, ...args]
      : [
          'run',
          '--rm',
          ...stdin,
          '--network',
          'host',
          '-u',
          user,
          '-v',
          `${volumeDir}:${volumeDir}`,
          ...envArgs,
          '--entrypoint',
          name,
          image,
          ...args,
        ];
    const bounded =
      options.timeoutMs !== undefined
        ? { ...options, timeoutMs: options.timeoutMs + DOCKER_EXEC_ALLOWANCE_MS }
        : options;
    return dockerCli(socketPath, argv, bounded);
  }
}

/** uid and gid of a user inside an image, for the host's chown of its bind-mounted data. */
export async function imageUser(socketPath: string, image: string, user: string): Promise<RunAs> {
  const line = await dockerCli(socketPath, [
    'run',
    '--rm',
    '--network',
    'none',
    '--entrypoint',
    'getent',
    image,
    'passwd',
    user,
  ]);
  const f = line.trim().split(':');
  if (f.length < 4 || !/^\d+$/.test(f[2]) || !/^\d+$/.test(f[3]))
    throw new Error(`image ${image} has no user ${user} (getent passwd: ${line.trim() || 'nothing'})`);
  return { user, uid: Number(f[2]), gid: Number(f[3]) };
}
