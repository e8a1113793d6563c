/**
 * A Docker daemon for the docker suites. A daemon that already answers (DOCKER_HOST, the default
 * socket, or the private one a previous run left) is used as it is; otherwise, as root, a private
 * `dockerd` is started with its own data root, socket, pid file and exec root, host networking
 * only (`--bridge=none --iptables=false`), and stopped by its PID when the last suite is done.
 *
 * The data root sits under a stable path (`SF_DOCKER_ROOT`, default /var/tmp/sf-docker) so the
 * engine images built from Debian's packages (slow: minutes) persist between runs: a second run
 * finds them by version and builds nothing. Where neither a daemon nor the images can be had, the
 * suites skip with the reason; nothing is ever emulated.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync } from 'node:fs';
import path from 'node:path';
import { DockerApi, DEFAULT_DOCKER_SOCKET } from '../../cell/docker-api';
import { buildEngineImage, IMAGE_ENGINES, type BuiltImage } from '../../cell/docker-images';
import { findBinary } from '../../cell/run-command';

export const DOCKER_ROOT = process.env.SF_DOCKER_ROOT ?? '/var/tmp/sf-docker';
/** Short: containerd's socket paths under it must stay within the 108-byte sun_path. */
const EXEC_ROOT = process.env.SF_DOCKER_EXEC_ROOT ?? '/run/sf-dockerd';

export interface DockerDaemon {
  socketPath: string;
  /** True when this process started the daemon (and so stops it). */
  ownDaemon: boolean;
  images: BuiltImage[];
}

async function answers(socketPath: string): Promise<boolean> {
  if (!existsSync(socketPath)) return false;
  return new DockerApi({ socketPath })
    .call('GET', '/_ping', undefined, 2_000)
    .then((r) => r.status === 200)
    .catch(() => false);
}

let shared: Promise<DockerDaemon | string> | undefined;
let users = 0;
let ownPid: number | undefined;

async function startPrivateDaemon(socketPath: string): Promise<number | string> {
  if (process.getuid?.() !== 0) return 'no Docker daemon answers and this is not root, so none can be started';
  if (!(await findBinary('dockerd', ['/usr/sbin'])))
    return 'no Docker daemon answers and dockerd is not installed (npm run setup installs docker.io)';
  mkdirSync(path.join(DOCKER_ROOT, 'data'), { recursive: true });
  const log = openSync(path.join(DOCKER_ROOT, 'dockerd.log'), 'a');
  const child = spawn(
    'dockerd',
    [
      '--bridge=none',
      '--iptables=false',
      '--ip6tables=false',
      '--data-root',
      path.join(DOCKER_ROOT, 'data'),
      '-H',
      `unix://${socketPath}`,
      '--pidfile',
      path.join(DOCKER_ROOT, 'dockerd.pid'),
      '--exec-root',
      EXEC_ROOT,
    ],
    { detached: true, stdio: ['ignore', log, log] },
  );
  closeSync(log);
  let exited = false;
  child.once('exit', () => (exited = true));
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && !exited) {
    if (await answers(socketPath)) return child.pid ?? 'dockerd started without a pid';
    await new Promise((r) => setTimeout(r, 250));
  }
  if (!exited && child.pid) process.kill(child.pid, 'SIGKILL');
  return `a private dockerd did not answer within 60 s (see ${path.join(DOCKER_ROOT, 'dockerd.log')})`;
}

async function acquire(log: (line: string) => void): Promise<DockerDaemon | string> {
  if (!(await findBinary('docker'))) return 'the docker CLI is not installed (npm run setup installs docker.io)';
  const candidates = [
    ...(process.env.DOCKER_HOST?.startsWith('unix://') ? [process.env.DOCKER_HOST.slice('unix://'.length)] : []),
    DEFAULT_DOCKER_SOCKET,
    path.join(DOCKER_ROOT, 'docker.sock'),
  ];
  let socketPath: string | undefined;
  for (const c of candidates) if (await answers(c)) socketPath ??= c;
  let ownDaemon = false;
  if (!socketPath) {
    socketPath = path.join(DOCKER_ROOT, 'docker.sock');
    const started = await startPrivateDaemon(socketPath);
    if (typeof started === 'string') return started;
    ownPid = started;
    ownDaemon = true;
  }
  const api = new DockerApi({ socketPath });
  const images: BuiltImage[] = [];
  try {
    for (const engine of IMAGE_ENGINES) {
      const built = await buildEngineImage(api, engine, { log });
      log(`${built.image}: ${built.built ? `built in ${built.seconds.toFixed(0)} s` : 'cached'}`);
      images.push(built);
    }
  } catch (err) {
    await stopOwnDaemon();
    return `engine images could not be built here: ${(err as Error).message}`;
  }
  return { socketPath, ownDaemon, images };
}

async function stopOwnDaemon(): Promise<void> {
  const pid = ownPid;
  ownPid = undefined;
  if (!pid) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 200; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Gone meanwhile.
  }
}

/**
 * The daemon with the engine images, or the reason there is none (the caller skips with it).
 * Progress lines of an image build go to `log` (the first build takes minutes).
 */
export function useDockerDaemon(log: (line: string) => void = () => undefined): Promise<DockerDaemon | string> {
  users++;
  shared ??= acquire(log);
  return shared;
}

/** Releases a `useDockerDaemon`; the last release stops a daemon this process started. */
export async function releaseDockerDaemon(): Promise<void> {
  users = Math.max(0, users - 1);
  if (users > 0) return;
  shared = undefined;
  await stopOwnDaemon();
}
