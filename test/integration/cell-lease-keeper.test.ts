import { expect } from 'chai';
import { Redis } from 'ioredis';
import { LeaseKeeper } from '../../cell/lease-keeper';
import { fenceLease, readLease, renewLease } from '../../protocol/lease';
import { eventually } from '../helpers/cell-harness';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { keyLayout } from '../../protocol/keys';

const KEYS = keyLayout();

describe('LeaseKeeper', function () {
  this.timeout(20_000);
  let server: RedisServerHandle;
  let redis: Redis;

  before(async () => {
    server = await startRedisServer();
    redis = new Redis(server.url);
  });

  after(async () => {
    redis.disconnect();
    await server.stop();
  });

  describe('renewLease', () => {
    it('refuses a renewal with an older epoch than the lease, atomically', async () => {
      expect(await renewLease(redis, KEYS, 'l-1', 5, 'cell-a', 2_000)).to.deep.equal({ ok: true, epoch: 5 });
      expect(await renewLease(redis, KEYS, 'l-1', 4, 'cell-b', 2_000)).to.deep.equal({ ok: false, epoch: 5 });
      expect((await readLease(redis, KEYS, 'l-1'))?.holder).to.equal('cell-a');
      expect(await renewLease(redis, KEYS, 'l-1', 6, 'cell-b', 2_000)).to.deep.equal({ ok: true, epoch: 6 });
    });

    it('refuses an old epoch even after the lease expired, once control has fenced it', async () => {
      await renewLease(redis, KEYS, 'l-2', 1, 'cell-a', 200);
      expect(await fenceLease(redis, KEYS, 'l-2', 2)).to.equal(2);
      expect(await redis.exists(KEYS.lease('l-2'))).to.equal(0);
      expect((await renewLease(redis, KEYS, 'l-2', 1, 'cell-a', 200)).ok).to.equal(false);
      expect((await renewLease(redis, KEYS, 'l-2', 2, 'cell-b', 200)).ok).to.equal(true);
    });
  });

  describe('renewedAt', () => {
    it('moves with every renewal that succeeds and stays put on a refusal', async () => {
      const keeper = new LeaseKeeper({
        keys: KEYS,
        redis,
        instanceId: 'l-9',
        holder: 'cell-a',
        epoch: 1,
        ttlMs: 1_000,
        healthy: async () => true,
      });
      expect(keeper.renewedAt).to.equal(0);
      const before = Date.now();
      expect((await keeper.renewOnce())?.ok).to.equal(true);
      const renewed = keeper.renewedAt;
      expect(renewed).to.be.at.least(before);
      // Fenced meanwhile: the cell tells a refusal after an expired lease (cut off for a whole
      // TTL, then deposed) from one while the lease was fresh by this time.
      await fenceLease(redis, KEYS, 'l-9', 2);
      expect(await keeper.renewOnce()).to.deep.equal({ ok: false, epoch: 2 });
      expect(keeper.renewedAt).to.equal(renewed);
    });
  });

  describe('start', () => {
    it('keeps the lease while healthy, lets it expire when not, and reports loss on a fence', async () => {
      let healthy = true;
      const events: string[] = [];
      const keeper = new LeaseKeeper({
        keys: KEYS,
        redis,
        instanceId: 'l-3',
        holder: 'cell-a',
        epoch: 3,
        ttlMs: 600,
        renewEveryMs: 100,
        healthy: async () => healthy,
      });
      keeper.on('acquired', () => events.push('acquired'));
      keeper.on('lost', (why: { reason: string }) => events.push(`lost:${why.reason}`));
      keeper.start();
      try {
        await eventually(async () => keeper.held, 2_000, 'lease acquired');
        await new Promise((r) => setTimeout(r, 900));
        expect((await readLease(redis, KEYS, 'l-3'))?.epoch).to.equal(3);

        healthy = false;
        await eventually(async () => (await redis.exists(KEYS.lease('l-3'))) === 0, 3_000, 'lease expired');
        expect(events).to.include('lost:unhealthy');

        healthy = true;
        await eventually(async () => keeper.held, 2_000, 'lease re-acquired');
        await fenceLease(redis, KEYS, 'l-3', 4);
        await eventually(async () => !keeper.held, 2_000, 'lease lost');
        expect(events.at(-1)).to.equal('lost:refused');
        expect(await redis.exists(KEYS.lease('l-3'))).to.equal(0);
      } finally {
        keeper.stop();
      }
    });
  });
});
