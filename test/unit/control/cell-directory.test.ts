/**
 * CellDirectory against a real redis-server: a registration whose text changed only in
 * `heartbeatAt` (every heartbeat) is not parsed again, and any other change is.
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { CellDirectory } from '../../../control/services/cell-directory';
import type { CellRecord } from '../../../protocol/cell-protocol';
import { keyLayout } from '../../../protocol/keys';
import { startRedisServer, type RedisServerHandle } from '../../helpers/redis-server';

const keys = keyLayout('sf:');

function registration(name: string, heartbeatAt: number, capacityMb = 4096): CellRecord {
  return {
    name,
    zone: 'z1',
    capacityMb,
    usedMb: 0,
    host: '127.0.0.1',
    executors: ['process'],
    engines: ['redis'],
    portRange: { from: 20000, to: 20999 },
    instances: 0,
    startedAt: 1,
    heartbeatAt,
    heartbeatTtlMs: 3000,
  };
}

describe('CellDirectory', function () {
  this.timeout(30_000);
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
  beforeEach(async () => {
    await redis.flushall();
  });

  async function register(record: CellRecord): Promise<void> {
    await redis.sadd(keys.cells, record.name);
    await redis.set(keys.cell(record.name).registration, JSON.stringify(record));
  }

  describe('view', () => {
    it('reads again, besides the cells that reported, its share of the others in turn', async () => {
      const directory = new CellDirectory(redis, keys);
      for (const name of ['c1', 'c2', 'c3', 'c4']) {
        await register(registration(name, 1000));
        await redis.hset(
          keys.cell(name).actual,
          `${name}-0`,
          JSON.stringify({ instanceId: `${name}-0`, state: 'running' }),
        );
      }
      await directory.view();
      // Reports changed with no message heard (lost): a view without a share keeps the old ones.
      for (const name of ['c1', 'c2', 'c3', 'c4'])
        await redis.hset(
          keys.cell(name).actual,
          `${name}-0`,
          JSON.stringify({ instanceId: `${name}-0`, state: 'failed' }),
        );
      const state = (view: Map<string, { actual: Map<string, { state: string }> }>) =>
        ['c1', 'c2', 'c3', 'c4'].map((n) => view.get(n)?.actual.get(`${n}-0`)?.state);
      expect(state(await directory.view())).to.deep.equal(['running', 'running', 'running', 'running']);
      // Half of them at a time, in turn: two views of half read all four again.
      expect(state(await directory.view(0.5))).to.deep.equal(['failed', 'failed', 'running', 'running']);
      expect(state(await directory.view(0.5))).to.deep.equal(['failed', 'failed', 'failed', 'failed']);
    });

    it('reads the reports of the cells asked for now, the others from the last read', async () => {
      const directory = new CellDirectory(redis, keys);
      for (const name of ['c1', 'c2']) {
        await register(registration(name, 1000));
        await redis.hset(
          keys.cell(name).actual,
          `${name}-0`,
          JSON.stringify({ instanceId: `${name}-0`, state: 'running' }),
        );
      }
      await directory.snapshot();
      for (const name of ['c1', 'c2'])
        await redis.hset(
          keys.cell(name).actual,
          `${name}-0`,
          JSON.stringify({ instanceId: `${name}-0`, state: 'failed' }),
        );
      const view = await directory.snapshot(['c2']);
      expect(view.get('c1')?.actual.get('c1-0')?.state).to.equal('running');
      expect(view.get('c2')?.actual.get('c2-0')?.state).to.equal('failed');
      expect((await directory.snapshot()).get('c1')?.actual.get('c1-0')?.state).to.equal('failed');
    });

    it('reuses the parsed registration when only heartbeatAt changed, with the new time', async () => {
      const directory = new CellDirectory(redis, keys);
      await register(registration('c1', 1000));
      const first = (await directory.view()).get('c1')?.record;
      expect(first?.heartbeatAt).to.equal(1000);

      await register(registration('c1', 2000));
      const second = (await directory.view()).get('c1')?.record;
      expect(second).to.deep.equal(registration('c1', 2000));
      // The record is a new object with the new time, but what it holds was not parsed again:
      // JSON.parse would have built new arrays and objects.
      expect(second).to.not.equal(first);
      expect(second?.engines).to.equal(first?.engines);
      expect(second?.portRange).to.equal(first?.portRange);
    });

    it('parses a registration again when anything besides heartbeatAt changed', async () => {
      const directory = new CellDirectory(redis, keys);
      await register(registration('c1', 1000));
      const first = (await directory.view()).get('c1')?.record;

      await register(registration('c1', 2000, 8192));
      const second = (await directory.view()).get('c1')?.record;
      expect(second).to.deep.equal(registration('c1', 2000, 8192));
      expect(second?.portRange).to.not.equal(first?.portRange);
    });

    it('keeps the last record of a cell whose registration expired, and says it is not alive', async () => {
      const directory = new CellDirectory(redis, keys);
      await register(registration('c1', 1000));
      await directory.view();
      await redis.del(keys.cell('c1').registration);
      const cell = (await directory.view()).get('c1');
      expect(cell?.alive).to.equal(false);
      expect(cell?.record).to.deep.equal(registration('c1', 1000));
    });
  });
});
