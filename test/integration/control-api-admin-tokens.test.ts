/**
 * Two `sf up` on one machine shared one admin token file, and the CLI sent
 * the first platform's token to the second. Now each control address has its own file and the CLI
 * reads the one for the control it talks to.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fetchWithCa } from '../../common/https-fetch';
import { freePort } from '../helpers/free-port';
import { freePortBlock, releasePortBlock } from '../helpers/service-cluster';
import { runSf, runSfToExit, type SfProcess } from '../helpers/sf-process';
import { eventually } from '../helpers/tcp-client';

describe('admin token files of two platforms on one machine', function () {
  this.timeout(180_000);
  let home: string;
  const ups: SfProcess[] = [];
  const blocks: number[] = [];
  const controls: number[] = [];

  before(async () => {
    home = await mkdtemp(path.join(tmpdir(), 'sf-two-ups-'));
  });
  after(async () => {
    for (const up of ups) await up.stop();
    await rm(home, { recursive: true, force: true });
    for (const base of blocks) releasePortBlock(base);
  });

  it('gives each `sf up` its own token file and the CLI the right token for each', async function () {
    const env = { SF_HOME: home, SF_REDIS_URL: '', SF_API_TOKEN: '', SF_LOG_LEVEL: 'warn' };
    for (const name of ['a', 'b']) {
      const control = await freePort();
      const routeBase = await freePortBlock();
      const cellBase = await freePortBlock();
      blocks.push(routeBase, cellBase);
      controls.push(control);
      const up = runSf(
        [
          'up',
          '--data-dir',
          path.join(home, `data-${name}`),
          '--cells',
          '1',
          '--control-port',
          String(control),
          '--router-admin-port',
          String(await freePort()),
          '--redis-port',
          String(await freePort()),
          '--cell-port-base',
          String(cellBase),
          '--cell-metrics-port-base',
          '0',
          '--route-ports',
          `${routeBase}-${routeBase + 99}`,
        ],
        env,
      );
      ups.push(up);
      await eventually(() => up.output().includes('Try next:'), 60_000, `sf up ${name} ready`);
    }

    const files = (await readdir(path.join(home, 'admin-tokens'))).sort();
    expect(files).to.deep.equal(controls.map((p) => `127.0.0.1-${p}`).sort());
    const tokens = await Promise.all(
      controls.map(async (p) => (await readFile(path.join(home, 'admin-tokens', `127.0.0.1-${p}`), 'utf8')).trim()),
    );
    expect(tokens[0]).to.not.equal(tokens[1]);
    for (const p of controls) {
      expect((await stat(path.join(home, 'admin-tokens', `127.0.0.1-${p}`))).mode & 0o777).to.equal(0o600);
    }
    expect((await stat(path.join(home, 'admin-tokens'))).mode & 0o777).to.equal(0o700);

    // The CLI, configured only with the control URL, authenticates against each platform, each
    // verified (HTTPS, sf up's default) with its own platform's CA, recorded per address in SF_HOME.
    for (const p of controls) {
      const cells = await runSfToExit(['cells', '--json'], { ...env, SF_CONTROL_URL: `https://127.0.0.1:${p}` });
      expect(cells.code, cells.output).to.equal(0);
      expect((JSON.parse(cells.output) as Array<{ name: string }>).map((c) => c.name)).to.deep.equal(['cell-1']);
    }
    // Each control accepts its own token only.
    const other = await fetchWithCa(
      `https://127.0.0.1:${controls[1]}/v3/cells`,
      { headers: { authorization: `Bearer ${tokens[0]}` } },
      await readFile(path.join(home, 'data-b', 'ca.pem')),
    );
    expect(other.status).to.equal(401);
  });
});
