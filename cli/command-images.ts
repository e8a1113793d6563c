/**
 * `sf images build [IMAGE...]`: builds the images the docker executor and a containerised
 * platform run, on this machine: the engine images (service-foundry/redis,
 * service-foundry/postgres) from Debian's packages, tagged with the engine's version (and
 * `latest`), an image of that version already in the daemon kept unless --force; and the `sf`
 * image (service-foundry/sf) from the project's Dockerfile (cli/sf-image.ts).
 */
import path from 'node:path';
import type { Command } from 'commander';
import { DockerApi } from '../cell/docker-api';
import { buildEngineImage, IMAGE_ENGINES } from '../cell/docker-images';
import { UsageError, exitWithError } from './cli-support';
import { formatTable, printResult } from './output-table';
import { startProgress } from './progress';
import { buildSfImage } from './sf-image';

interface BuildFlags {
  force?: boolean;
  base?: string;
  json?: boolean;
  quiet?: boolean;
}

const IMAGE_NAMES = [...IMAGE_ENGINES, 'sf'] as const;
type ImageName = (typeof IMAGE_NAMES)[number];

interface BuildResult {
  name: ImageName;
  image: string;
  tags: string[];
  built: boolean;
  seconds: number;
  base?: string;
}

/** The checkout or installed package this `sf` runs from (dist/cli/ is two levels down). */
const PROJECT_DIR = path.resolve(__dirname, '..', '..');

async function buildOne(
  api: DockerApi,
  name: ImageName,
  flags: BuildFlags,
  log: (line: string) => void,
): Promise<BuildResult> {
  if (name === 'sf') {
    const r = await buildSfImage(api, { projectDir: PROJECT_DIR, base: flags.base, force: flags.force, log });
    return { name, image: r.image, tags: r.tags, built: true, seconds: r.seconds, base: r.base };
  }
  const r = await buildEngineImage(api, name, { force: flags.force, log });
  return { name, image: r.image, tags: r.tags, built: r.built, seconds: r.seconds };
}

async function build(names: string[], flags: BuildFlags): Promise<void> {
  const wanted = names.length ? names : [...IMAGE_NAMES];
  for (const n of wanted)
    if (!IMAGE_NAMES.includes(n as ImageName))
      throw new UsageError(`unknown image '${n}': choose from ${IMAGE_NAMES.join(', ')}`);
  const api = new DockerApi();
  const ping = await api.call('GET', '/_ping', undefined, 2_000).catch((err: Error) => err);
  if (ping instanceof Error || ping.status !== 200)
    throw new Error(`no Docker daemon answers at ${api.socketPath} (set DOCKER_HOST=unix://PATH)`);
  const results: BuildResult[] = [];
  for (const name of wanted as ImageName[]) {
    // A spinner with the current step and elapsed time on a terminal, plain lines otherwise.
    const progress = flags.quiet || flags.json ? undefined : startProgress(`image ${name}`);
    try {
      results.push(await buildOne(api, name, flags, (line) => progress?.update(line)));
    } finally {
      progress?.stop();
    }
  }
  printResult(flags.json, results, () =>
    formatTable(
      ['IMAGE', 'TAGS', 'RESULT'],
      results.map((r) => [
        r.image,
        r.tags.join(' '),
        r.built ? `built in ${r.seconds.toFixed(0)} s${r.base ? ` on ${r.base}` : ''}` : 'already built',
      ]),
    ),
  );
}

export function registerImagesCommand(program: Command): void {
  const images = program.command('images').description('images for the docker executor and the platform itself');
  images
    .command('build')
    .argument('[image...]', `images to build: ${IMAGE_NAMES.join(', ')} (default: all)`)
    .description(
      'build images here: the engines from Debian packages (mmdebstrap + docker import), tagged with the engine version, and sf from the Dockerfile; needs root and a Docker daemon (DOCKER_HOST)',
    )
    .option('--force', 'rebuild engine images (and the local Node.js base of sf) even when this version exists')
    .option(
      '--base <image>',
      "base image of sf (default: node:20-bookworm-slim when it can be pulled, else a local Debian with this host's Node.js)",
    )
    .option('--quiet', 'no progress lines')
    .option('--json', 'machine-readable output')
    .action((names: string[], flags: BuildFlags) => build(names, flags).catch(exitWithError));
}
