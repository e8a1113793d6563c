/**
 * `sf images build [ENGINE...]`: builds the engine images the docker executor runs
 * (service-foundry/redis, service-foundry/postgres) on this machine from Debian's packages,
 * tagged with the engine's version (and `latest`); an image of that version already in the
 * daemon is kept unless --force.
 */
import type { Command } from 'commander';
import { DockerApi } from '../cell/docker-api';
import { buildEngineImage, IMAGE_ENGINES, type BuiltImage, type ImageEngine } from '../cell/docker-images';
import { UsageError, exitWithError } from './cli-support';
import { formatTable, printResult } from './output-table';
import { startProgress } from './progress';

interface BuildFlags {
  force?: boolean;
  json?: boolean;
  quiet?: boolean;
}

async function build(names: string[], flags: BuildFlags): Promise<void> {
  const wanted = names.length ? names : [...IMAGE_ENGINES];
  for (const n of wanted)
    if (!IMAGE_ENGINES.includes(n as ImageEngine))
      throw new UsageError(`unknown image '${n}': choose from ${IMAGE_ENGINES.join(', ')}`);
  const api = new DockerApi();
  const ping = await api.call('GET', '/_ping', undefined, 2_000).catch((err: Error) => err);
  if (ping instanceof Error || ping.status !== 200)
    throw new Error(`no Docker daemon answers at ${api.socketPath} (set DOCKER_HOST=unix://PATH)`);
  const results: BuiltImage[] = [];
  for (const engine of wanted as ImageEngine[]) {
    // A spinner with the current step and elapsed time on a terminal, plain lines otherwise.
    const progress = flags.quiet || flags.json ? undefined : startProgress(`image ${engine}`);
    try {
      results.push(await buildEngineImage(api, engine, { force: flags.force, log: (line) => progress?.update(line) }));
    } finally {
      progress?.stop();
    }
  }
  printResult(flags.json, results, () =>
    formatTable(
      ['IMAGE', 'TAGS', 'RESULT'],
      results.map((r) => [r.image, r.tags.join(' '), r.built ? `built in ${r.seconds.toFixed(0)} s` : 'already built']),
    ),
  );
}

export function registerImagesCommand(program: Command): void {
  const images = program.command('images').description('engine images for the docker executor');
  images
    .command('build')
    .argument('[engine...]', `images to build: ${IMAGE_ENGINES.join(', ')} (default: all)`)
    .description(
      'build engine images here from Debian packages (mmdebstrap + docker import), tagged with the engine version; needs root and a Docker daemon (DOCKER_HOST)',
    )
    .option('--force', 'rebuild even when an image of this version exists')
    .option('--quiet', 'no progress lines')
    .option('--json', 'machine-readable output')
    .action((names: string[], flags: BuildFlags) => build(names, flags).catch(exitWithError));
}
