/**
 * The `sf` image (`service-foundry/sf:VERSION`): the project's Dockerfile built on this machine
 * through the Docker Engine API, from the built checkout (dist/ and the production node_modules,
 * pruned offline), so no registry is needed. Its base is the `BASE` build argument: the public
 * `node:20-bookworm-slim` when the daemon has it or can pull it, else a local Debian made by
 * mmdebstrap with the engines and this host's Node.js binary (`service-foundry/node:VERSION`).
 * The image runs every role: `sf router`, `sf control`, `sf cell`.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, SfError } from '../common/errors';
import type { DockerApi } from '../cell/docker-api';
import { IMAGE_REPOSITORY_PREFIX, imageExists, importDebianImage, tagImage } from '../cell/docker-images';
import { runCommand } from '../cell/run-command';

/** @default the public base the Dockerfile names */
export const PUBLIC_SF_BASE = 'node:20-bookworm-slim';
export const SF_IMAGE_REPOSITORY = `${IMAGE_REPOSITORY_PREFIX}/sf`;
const NODE_BASE_REPOSITORY = `${IMAGE_REPOSITORY_PREFIX}/node`;

/** What the local base holds besides Node.js: what a cell running processes needs. */
const LOCAL_BASE_PACKAGES = [
  'ca-certificates',
  'iproute2',
  'libstdc++6',
  'redis-server',
  'redis-tools',
  'postgresql',
  'postgresql-client',
  'prometheus-redis-exporter',
  'prometheus-postgres-exporter',
];

export interface BuildSfImageOptions {
  /** The checkout to package (built: dist/ and node_modules present). */
  projectDir: string;
  /** The base image; @default public when available, else the local one */
  base?: string;
  /** Rebuild the local base even when it exists. @default false */
  force?: boolean;
  log?: (line: string) => void;
  /** @default '/var/tmp' */
  workDir?: string;
}

export interface BuiltSfImage {
  image: string;
  tags: string[];
  base: string;
  seconds: number;
}

/** The public base when the daemon has it or pulls it within a short time; undefined otherwise. */
async function publicBase(api: DockerApi, log: (line: string) => void): Promise<string | undefined> {
  if (await imageExists(api, PUBLIC_SF_BASE)) return PUBLIC_SF_BASE;
  const [repo, tag] = PUBLIC_SF_BASE.split(':');
  log(`pulling ${PUBLIC_SF_BASE}`);
  const res = await api
    .call(
      'POST',
      `/images/create?fromImage=${encodeURIComponent(repo)}&tag=${encodeURIComponent(tag)}`,
      undefined,
      120_000,
    )
    .catch(() => undefined);
  if (res?.status === 200 && (await imageExists(api, PUBLIC_SF_BASE))) return PUBLIC_SF_BASE;
  log(`${PUBLIC_SF_BASE} cannot be pulled here; using a local Debian base with this host's Node.js`);
  return undefined;
}

/**
 * `service-foundry/node:NODE_VERSION`: a Debian of the host's release with the engines, and the
 * host's own `node` binary copied in (Debian's nodejs is older than the project needs).
 */
export async function buildLocalNodeBase(
  api: DockerApi,
  options: { force?: boolean; log?: (line: string) => void; workDir?: string } = {},
): Promise<string> {
  const version = process.versions.node;
  const image = `${NODE_BASE_REPOSITORY}:${version}`;
  if (!options.force && (await imageExists(api, image))) return image;
  const node = realpathSync(process.execPath);
  await importDebianImage(api, {
    repository: NODE_BASE_REPOSITORY,
    tag: version,
    packages: LOCAL_BASE_PACKAGES,
    hooks: [
      `copy-in ${node} /usr/local/bin`,
      ...(path.basename(node) === 'node'
        ? []
        : [`mv "$1"/usr/local/bin/${path.basename(node)} "$1"/usr/local/bin/node`]),
      // Debian's postgresql creates a "main" cluster on install; instances bring their own.
      'rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main',
    ],
    changes: ['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', `LABEL sf.node=${version}`],
    workDir: options.workDir,
    log: options.log,
  });
  return image;
}

/** The build context: Dockerfile, package.json, dist/, the production node_modules, the native relay. */
async function prepareContext(projectDir: string, dir: string, log: (line: string) => void): Promise<void> {
  for (const f of ['Dockerfile', 'package.json', 'package-lock.json', 'dist'])
    if (!existsSync(path.join(projectDir, f)))
      throw new SfError(
        ErrorCode.InvalidOption,
        `${path.join(projectDir, f)} is missing: run npm ci and npm run build first`,
      );
  for (const f of ['Dockerfile', 'package.json', 'package-lock.json'])
    await cp(path.join(projectDir, f), path.join(dir, f));
  await cp(path.join(projectDir, 'dist'), path.join(dir, 'dist'), { recursive: true });
  log('copying node_modules');
  // node_modules may be a link to a shared install: copy what it points to.
  await runCommand('cp', ['-a', realpathSync(path.join(projectDir, 'node_modules')), path.join(dir, 'node_modules')], {
    timeoutMs: 600_000,
  });
  log('pruning development packages');
  await runCommand('npm', ['prune', '--omit=dev', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], {
    cwd: dir,
    timeoutMs: 600_000,
    env: { npm_config_cache: path.join(dir, '.npm-cache') },
  });
  await rm(path.join(dir, '.npm-cache'), { recursive: true, force: true });
  const release = path.join(dir, 'native-bindings', 'build', 'Release');
  await mkdir(release, { recursive: true });
  const built = path.join(projectDir, 'native-bindings', 'build', 'Release', 'sf_relay.node');
  if (existsSync(built)) await cp(built, path.join(release, 'sf_relay.node'));
}

/** POST /build with the context as a tar stream; the daemon's answer is a stream of JSON lines. */
async function dockerBuild(
  api: DockerApi,
  contextDir: string,
  tags: string[],
  buildArgs: Record<string, string>,
): Promise<void> {
  const query = new URLSearchParams({
    buildargs: JSON.stringify(buildArgs),
    rm: '1',
    forcerm: '1',
    networkmode: 'host',
  });
  for (const t of tags) query.append('t', t);
  const tar = spawn('tar', ['-C', contextDir, '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const res = await api.upload(`/build?${query.toString()}`, tar.stdout);
  const text = typeof res.body === 'string' ? res.body : JSON.stringify(res.body);
  const error = /"error(?:Detail)?":\s*(\{[^}]*\}|"[^"]*")/.exec(text);
  if (res.status !== 200 || error)
    throw new SfError(
      ErrorCode.EngineCommandFailed,
      `docker build failed (${res.status}): ${error?.[1] ?? text.slice(-500)}`,
    );
}

export async function buildSfImage(api: DockerApi, options: BuildSfImageOptions): Promise<BuiltSfImage> {
  const began = Date.now();
  const log = options.log ?? (() => undefined);
  const version = (
    JSON.parse(readFileSync(path.join(options.projectDir, 'package.json'), 'utf8')) as { version: string }
  ).version;
  const base =
    options.base ??
    (await publicBase(api, log)) ??
    (await buildLocalNodeBase(api, { force: options.force, log, workDir: options.workDir }));
  const image = `${SF_IMAGE_REPOSITORY}:${version}`;
  const tags = [image, `${SF_IMAGE_REPOSITORY}:latest`];
  const dir = await mkdtemp(path.join(options.workDir ?? '/var/tmp', 'sf-image-context-'));
  try {
    await prepareContext(options.projectDir, dir, log);
    log(`building ${image} on ${base}`);
    await dockerBuild(api, dir, tags, { BASE: base });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  await tagImage(api, image, SF_IMAGE_REPOSITORY, 'latest').catch(() => undefined);
  return { image, tags, base, seconds: (Date.now() - began) / 1000 };
}
