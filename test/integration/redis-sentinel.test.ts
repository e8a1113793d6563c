import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { createRedis } from '../../common/redis-connection';
import { freePort } from '../helpers/free-port';
import { startRedisServer, waitForPort, type RedisServerHandle } from '../helpers/redis-server';

describe('createRedis with Redis Sentinel', function () {
  this.timeout(30_000);
  let master: RedisServerHandle;
  let dir: string;
  let stopSentinel: () => Promise<void>;
  let sentinelPort: number;

  before(async () => {
    master = await startRedisServer();
    dir = mkdtempSync(join(tmpdir(), 'sf-sentinel-'));
    sentinelPort = await freePort();
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(conf, `port ${sentinelPort}\nbind 127.0.0.1\nsentinel monitor sf-state 127.0.0.1 ${master.port} 1\n`);
    const child = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    stopSentinel = async () => {
      child.kill('SIGKILL');
      await exited;
    };
    await waitForPort(sentinelPort);
  });

  after(async () => {
    await stopSentinel?.();
    await master?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds the master through the sentinel and talks to it', async () => {
    const client = createRedis(`redis-sentinel://127.0.0.1:${sentinelPort}/sf-state`, { maxRetriesPerRequest: 2 });
    try {
      await client.set('through-sentinel', 'yes');
      expect(await client.get('through-sentinel')).to.equal('yes');
      const direct = createRedis(master.url);
      expect(await direct.get('through-sentinel')).to.equal('yes');
      direct.disconnect();
    } finally {
      client.disconnect();
    }
  });
});
