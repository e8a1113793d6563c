/**
 * The `sf` image built here from the project's Dockerfile (cli/sf-image.ts) against a real
 * daemon: it runs every role, and a router in a container relays through a route to a backend on
 * the host. Skips, saying why, where no daemon can be had.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { DockerApi } from '../../cell/docker-api';
import { dockerCli } from '../../cell/docker-engine-tools';
import { buildSfImage, type BuiltSfImage } from '../../cli/sf-image';
import { eventually } from '../helpers/cell-harness';
import { releaseDockerDaemon, useDockerDaemon } from '../helpers/docker-daemon';
import { freePort } from '../helpers/free-port';
import { connectTo, readLine } from '../helpers/tcp-client';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';

const PROJECT_DIR = path.resolve(__dirname, '..', '..', '..');
const VERSION = (JSON.parse(readFileSync(path.join(PROJECT_DIR, 'package.json'), 'utf8')) as { version: string })
  .version;

describe('the sf image (Dockerfile, real daemon)', function () {
  this.timeout(300_000);
  let socketPath = '';
  let built: BuiltSfImage;
  let dir = '';
  const containers: string[] = [];
  let backend: TestServer | undefined;

  before(async function () {
    // The first build makes the local base (minutes); later ones reuse it and the layer cache.
    this.timeout(3_600_000);
    const daemon = await useDockerDaemon();
    if (typeof daemon === 'string') {
      console.log(`      skipped: ${daemon}`);
      this.skip();
    }
    socketPath = daemon.socketPath;
    built = await buildSfImage(new DockerApi({ socketPath }), { projectDir: PROJECT_DIR });
    console.log(`      ${built.image} on ${built.base}: ${built.seconds.toFixed(0)} s`);
    dir = await mkdtemp(path.join(tmpdir(), 'sf-image-'));
  });

  after(async () => {
    for (const c of containers) await dockerCli(socketPath, ['rm', '-f', c]).catch(() => undefined);
    await backend?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
    await releaseDockerDaemon();
  });

  const run = (args: string[]): Promise<string> =>
    dockerCli(socketPath, ['run', '--rm', '--network', 'host', built.image, ...args]);

  it('is tagged with the project version and prints it', async () => {
    expect(built.tags).to.include(`service-foundry/sf:${VERSION}`);
    expect((await run(['--version'])).trim()).to.equal(VERSION);
  });

  it('runs the control and cell roles', async () => {
    expect(await run(['control', '--help'])).to.contain('Usage: sf control');
    expect(await run(['cell', '--help'])).to.contain('Usage: sf cell');
  });

  it('runs sf router from a route file: /health answers and a route relays to a backend on the host', async () => {
    backend = await startNamedServer('host-backend');
    const [routePort, adminPort] = [await freePort(), await freePort()];
    const routes = path.join(dir, 'routes.json');
    await writeFile(
      routes,
      JSON.stringify({
        version: 1,
        routes: [{ port: routePort, backends: [{ host: '127.0.0.1', port: backend.port }] }],
      }),
    );
    const name = `sf-router-test-${process.pid}`;
    containers.push(name);
    await dockerCli(socketPath, [
      'run',
      '-d',
      '--name',
      name,
      '--network',
      'host',
      '-v',
      `${dir}:${dir}:ro`,
      built.image,
      'router',
      '--routes',
      routes,
      '--admin',
      `127.0.0.1:${adminPort}`,
    ]);
    const health = await eventually(
      async () => {
        const res = await fetch(`http://127.0.0.1:${adminPort}/health`, { signal: AbortSignal.timeout(2_000) });
        return res.status === 200 ? res.text() : undefined;
      },
      60_000,
      'router /health in the container',
    );
    expect(health).to.be.a('string');
    const socket = await connectTo(routePort);
    try {
      expect(await readLine(socket)).to.equal('host-backend');
    } finally {
      socket.destroy();
    }
  });
});
