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
