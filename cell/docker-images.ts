/**
 * Engine images built on this machine from Debian's packages (no registry needed): a minimal
 * Debian of the host's own release made by `mmdebstrap --variant=apt` with the engine and its
 * Prometheus exporter, streamed into the daemon as an image (`docker import`). Tags are the
 * engine's version, so a rebuild for the same version is skipped: the daemon's image store is
 * the cache.
 */
import { spawn } from 'node:child_process';
import { createReadStream, existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import type { EngineKind } from '../protocol';
import { ErrorCode, SfError } from '../common';
import { type DockerApi } from './docker-api';
import { runCommand } from './run-command';

/** The engines that have images (a `tcp` instance runs whatever its spec names). */
export type ImageEngine = Exclude<EngineKind, 'tcp'>;
export const IMAGE_ENGINES: readonly ImageEngine[] = ['redis', 'postgres'];

export interface ImageRecipe {
  repository: string;
  /** The package whose version tags the image. */
  versionPackage: string;
  packages: string[];
  /** PATH inside the image (PostgreSQL's binaries live in a versioned directory). */
  path: string;
}

export const IMAGE_REPOSITORY_PREFIX = 'service-foundry';
const BASE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** `5:7.0.15-1~deb12u10` -> `7.0.15`: the upstream version, without epoch and Debian revision. */
export function upstreamVersion(debianVersion: string): string {
  const noEpoch = debianVersion.replace(/^\d+:/, '');
  const dash = noEpoch.lastIndexOf('-');
  return (dash > 0 ? noEpoch.slice(0, dash) : noEpoch).replace(/[+~].*$/, '');
}

async function aptField(args: string[], pattern: RegExp): Promise<string> {
  // Generous: apt-cache reads every package list, which takes long on a loaded machine.
  const out = await runCommand('apt-cache', args, { timeoutMs: 180_000 });
  const m = pattern.exec(out);
  if (!m) throw new SfError(ErrorCode.EngineUnavailable, `apt-cache ${args.join(' ')}: no ${pattern.source} found`);
  return m[1];
}

/** PostgreSQL's packages are versioned by major (postgresql-15 on bookworm). */
async function postgresMajor(): Promise<string> {
  return aptField(['depends', 'postgresql'], /Depends: postgresql-(\d+)/);
}

export async function imageRecipe(engine: ImageEngine): Promise<ImageRecipe> {
  if (engine === 'redis') {
    return {
      repository: `${IMAGE_REPOSITORY_PREFIX}/redis`,
      versionPackage: 'redis-server',
      packages: ['redis-server', 'redis-tools', 'prometheus-redis-exporter'],
      path: BASE_PATH,
    };
  }
  const major = await postgresMajor();
  return {
    repository: `${IMAGE_REPOSITORY_PREFIX}/postgres`,
    versionPackage: `postgresql-${major}`,
    packages: [`postgresql-${major}`, `postgresql-client-${major}`, 'prometheus-postgres-exporter'],
    path: `/usr/lib/postgresql/${major}/bin:${BASE_PATH}`,
  };
}

/** The version apt would install from this machine's sources, i.e. the one an image gets. */
export async function candidateVersion(pkg: string): Promise<string> {
  return upstreamVersion(await aptField(['show', '--no-all-versions', pkg], /^Version: (\S+)/m));
}

/** This machine's release (`bookworm`): images are made of the same packages as the host. */
export function hostSuite(): string {
  const m = /^VERSION_CODENAME=(\S+)/m.exec(readFileSync('/etc/os-release', 'utf8'));
  if (!m) throw new SfError(ErrorCode.EngineUnavailable, 'no VERSION_CODENAME in /etc/os-release');
  return m[1];
}

/** The host's enabled apt source files, handed to mmdebstrap as its mirrors. */
export function hostAptSources(): string[] {
  const files = existsSync('/etc/apt/sources.list') ? ['/etc/apt/sources.list'] : [];
  const dir = '/etc/apt/sources.list.d';
  if (existsSync(dir))
    for (const f of readdirSync(dir).sort()) if (/\.(list|sources)$/.test(f)) files.push(path.join(dir, f));
  return files.filter((f) => readFileSync(f, 'utf8').trim() !== '');
}

export interface BuildImageOptions {
  /** Rebuild even when an image of this version exists. @default false */
  force?: boolean;
  /** Where the root filesystem's tarball is made before the import. @default '/var/tmp' */
  workDir?: string;
  /** Progress lines (mmdebstrap's stderr). */
  log?: (line: string) => void;
}

export interface BuiltImage {
  engine: ImageEngine;
  image: string;
  tags: string[];
  /** False when an image of this version was already there. */
  built: boolean;
  seconds: number;
}

export async function imageExists(api: DockerApi, image: string): Promise<boolean> {
  return (await api.call('GET', `/images/${encodeURIComponent(image)}/json`)).status === 200;
}

/** The image the docker executor runs for an engine when the cell names none. */
export function defaultEngineImage(engine: ImageEngine): string {
  return `${IMAGE_REPOSITORY_PREFIX}/${engine}:latest`;
}

export async function buildEngineImage(
  api: DockerApi,
  engine: ImageEngine,
  options: BuildImageOptions = {},
): Promise<BuiltImage> {
  const began = Date.now();
  const recipe = await imageRecipe(engine);
  const version = await candidateVersion(recipe.versionPackage);
  const image = `${recipe.repository}:${version}`;
  const tags = [image, `${recipe.repository}:latest`];
  if (!options.force && (await imageExists(api, image))) {
    await tagImage(api, image, recipe.repository, 'latest');
    return { engine, image, tags, built: false, seconds: (Date.now() - began) / 1000 };
  }
  await importDebianImage(api, {
    repository: recipe.repository,
    tag: version,
    packages: recipe.packages,
    // Debian's postgresql creates a "main" cluster on install; instances bring their own.
    hooks: ['rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main'],
    changes: [`ENV PATH=${recipe.path}`, `LABEL sf.engine=${engine} sf.version=${version}`],
    workDir: options.workDir,
    log: options.log,
  });
  await tagImage(api, image, recipe.repository, 'latest');
  return { engine, image, tags, built: true, seconds: (Date.now() - began) / 1000 };
}

export interface DebianImageRecipe {
  repository: string;
  tag: string;
  packages: string[];
  /** mmdebstrap `--customize-hook`s (`copy-in FILE DIR` puts a host file in the image). */
  hooks?: string[];
  /** Dockerfile instructions applied on import (`ENV`, `LABEL`, `CMD`...). */
  changes?: string[];
  /** @default '/var/tmp' */
  workDir?: string;
  log?: (line: string) => void;
}

/**
 * A minimal Debian of the host's release with `packages`, made by mmdebstrap from the host's own
 * apt sources and imported into the daemon as `repository:tag` (`docker import`).
 */
export async function importDebianImage(api: DockerApi, recipe: DebianImageRecipe): Promise<void> {
  const image = `${recipe.repository}:${recipe.tag}`;
  const workDir = await mkdtemp(path.join(recipe.workDir ?? '/var/tmp', 'sf-image-'));
  const tarball = path.join(workDir, 'rootfs.tar');
  const args = [
    '--variant=apt',
    `--include=${recipe.packages.join(',')}`,
    // Documentation and translations are dead weight in an image.
    '--dpkgopt=path-exclude=/usr/share/doc/*',
    '--dpkgopt=path-exclude=/usr/share/man/*',
    '--dpkgopt=path-exclude=/usr/share/locale/*',
    ...(recipe.hooks ?? []).map((h) => `--customize-hook=${h}`),
    hostSuite(),
    tarball,
    ...hostAptSources(),
  ];
  const child = spawn('mmdebstrap', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    for (const line of chunk.split('\n').filter(Boolean)) {
      stderr.push(line);
      recipe.log?.(line);
    }
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', (err) => {
      stderr.push(err.message);
      resolve(null);
    });
  });
  const query = new URLSearchParams({ fromSrc: '-', repo: recipe.repository, tag: recipe.tag });
  for (const c of recipe.changes ?? []) query.append('changes', c);
  try {
    const code = await exited;
    if (code !== 0)
      throw new SfError(ErrorCode.EngineCommandFailed, `mmdebstrap failed (${code}): ${stderr.slice(-5).join(' | ')}`);
    // From a finished file, not mmdebstrap's stdout: an import request left idle for the minutes
    // a build takes does not survive.
    const res = await api
      .upload(`/images/create?${query.toString()}`, createReadStream(tarball))
      .catch((err: Error) => err);
    if (res instanceof Error || res.status !== 200 || /"error"/.test(JSON.stringify(res.body)))
      throw new SfError(
        ErrorCode.EngineCommandFailed,
        `docker import of ${image} failed: ${res instanceof Error ? res.message : JSON.stringify(res.body)}`,
      );
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

export async function tagImage(api: DockerApi, image: string, repo: string, tag: string): Promise<void> {
  const res = await api.call('POST', `/images/${encodeURIComponent(image)}/tag?repo=${repo}&tag=${tag}`);
  if (res.status !== 201)
    throw new SfError(ErrorCode.EngineCommandFailed, `docker tag ${image} ${repo}:${tag} failed (${res.status})`);
}
