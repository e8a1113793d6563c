import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { eventually, tempCellDir } from '../helpers/cell-harness';
import { CellDriver } from '../helpers/cell-process';
import { createNetnsHost, enableForwarding, netnsSupported, type NetnsHost } from '../helpers/netns';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { keyLayout } from '../../protocol/keys';

const KEYS = keyLayout();

const SF = path.resolve(__dirname, '../../cli/sf.js');

describe('sf cell in its own network namespace', function () {
  this.timeout(60_000);
  let cellHost: NetnsHost;
  let clientHost: NetnsHost;
  let state: RedisServerHandle;
  let redis: Redis;
  let driver: CellDriver;
  let cellDir: { dir: string; remove(): Promise<void> };

  before(async function () {
    if (!(await netnsSupported())) {
      console.log('      skipped: creating network namespaces needs root with CAP_NET_ADMIN and iproute2');
      this.skip();
    }
  });

  beforeEach(async () => {
    cellHost = await createNetnsHost();
    clientHost = await createNetnsHost();
    enableForwarding();
    // State Redis listens where the cell's namespace reaches the root namespace.
    state = await startRedisServer(['--bind', '127.0.0.1', cellHost.gateway, '--protected-mode', 'no']);
    redis = new Redis(state.url);
    driver = new CellDriver(redis);
    cellDir = await tempCellDir();
    const child = cellHost.spawn(
      process.execPath,
      [
        SF,
        'cell',
        '--name',
        'pa',
        '--zone',
        'z1',
        '--capacity-mb',
        '1024',
        '--redis',
        `redis://${cellHost.gateway}:${state.port}`,
        '--data-dir',
        cellDir.dir,
        '--listen-host',
        cellHost.address,
        '--port-range',
        '22300-22399',
        '--heartbeat-ms',
        '200',
        '--heartbeat-ttl-ms',
        '1000',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr?.on('data', (d: Buffer) => {
      if (process.env.SF_TEST_VERBOSE) process.stderr.write(d);
    });
  });

  afterEach(async () => {
    // Deleting the namespace kills the agent and the instances running in it.
    await cellHost?.cleanup();
    await clientHost?.cleanup();
    redis?.disconnect();
    await state?.stop();
    await cellDir?.remove();
  });

  /** PING from the client namespace, with a hard deadline (a cut network hangs, it does not fail). */
  async function pingFromClient(host: string, port: number): Promise<boolean> {
    const out = await clientHost
      .run('timeout', ['2', 'redis-cli', '-h', host, '-p', String(port), 'ping'])
      .catch(() => '');
    return out.trim() === 'PONG';
  }

  it('fence-network cuts the cell off from a peer while control still reaches it; unfence-network restores it', async () => {
    await eventually(
      async () => (await redis.exists(KEYS.cell('pa').registration)) === 1,
      15_000,
      'registration from the namespace',
    );
    await driver.desire('pa', { instanceId: 'np-0' });
    const running = await driver.waitState('pa', 'np-0', 'running', 20_000);
    expect(running.host).to.equal(cellHost.address);
    expect(await pingFromClient(running.host, running.port as number)).to.equal(true);

    const fenced = await driver.order('pa', { type: 'fence-network', peers: [clientHost.address] });
    expect(fenced.ok, JSON.stringify(fenced.error)).to.equal(true);
    expect(await pingFromClient(running.host, running.port as number)).to.equal(false);
    // The instance is alive and the cell still heartbeats: only the peer is cut.
    const pos = await driver.order('pa', { type: 'position', instanceId: 'np-0' });
    expect(pos.ok).to.equal(true);
    expect(await redis.exists(KEYS.cell('pa').registration)).to.equal(1);

    const unfenced = await driver.order('pa', { type: 'unfence-network', peers: [clientHost.address] });
    expect(unfenced.ok).to.equal(true);
    expect(await pingFromClient(running.host, running.port as number)).to.equal(true);
  });
});
