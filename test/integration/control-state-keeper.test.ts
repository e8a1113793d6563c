/**
 * StateKeeper (control/convergence/state-keeper.ts) over a real redis-server: the copy of
 * control's state only moves forward, so a store that lost data is restored from the last good
 * copy even when a save ran after the loss.
 */
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pino from 'pino';
import { StateKeeper, type StateCopy } from '../../control/convergence/state-keeper';
import { keyLayout } from '../../protocol/keys';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';

const keys = keyLayout('sf:');

describe('control state copy', function () {
  this.timeout(30_000);
  let server: RedisServerHandle;
  let redis: Redis;
  let dir: string;

  before(async () => {
    server = await startRedisServer();
    redis = new Redis(server.port, '127.0.0.1');
    dir = mkdtempSync(join(tmpdir(), 'sf-keeper-'));
  });

  after(async () => {
    redis?.disconnect();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('never replaces a copy with a store that lost data, and restores the last good one', async () => {
    const file = join(dir, 'control-state.json');
    const keeper = new StateKeeper(redis, keys, file, pino({ level: 'silent' }));
    await redis.hset(keys.services, 'cache', JSON.stringify({ name: 'cache', instances: [] }));
    await redis.set(keys.servicesVersion, '7');
    await keeper.saveIfChanged();
    const good = JSON.parse(readFileSync(file, 'utf8')) as StateCopy;
    expect(good.markers.services).to.equal(7);

    // The store comes back empty; a pass that began before the loss saves after it.
    await redis.flushall();
    await keeper.saveIfChanged();
    const after = JSON.parse(readFileSync(file, 'utf8')) as StateCopy;
    expect(after.markers.services).to.equal(7);
    expect(after.entries.some((e) => e.key === keys.services)).to.equal(true);

    // The next pass finds the loss and writes the good copy back.
    expect(await keeper.restoreIfLost()).to.equal(true);
    expect(await redis.get(keys.servicesVersion)).to.equal('7');
    expect(JSON.parse((await redis.hget(keys.services, 'cache')) ?? '{}')).to.include({ name: 'cache' });
  });
});
