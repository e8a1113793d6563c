import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { EngineContext } from '../../../cell/engine';
import { PG_REWIND_WAL_KEEP_SIZE, renderPostgresConfig, walSegmentMb } from '../../../cell/engine-postgres';
import { spec } from '../../helpers/cell-harness';

function ctx(input: Parameters<typeof spec>[0]): EngineContext {
  return {
    spec: spec(input),
    dataDir: '/v/data',
    volumeDir: '/v',
    port: 20001,
    listenHost: '127.0.0.1',
    advertiseHost: '10.0.0.5',
  };
}

/** pg_rewind copies the source's whole pg_wal, so a sync service keeps it small. */
describe('PostgreSQL WAL settings', () => {
  describe('renderPostgresConfig', () => {
    it('keeps little WAL with sync durability and the least min_wal_size the segment size allows', () => {
      const sync = ctx({ instanceId: 'p', engine: 'postgres', durability: 'sync', replicas: 1 });
      const conf = renderPostgresConfig(sync, 'postgres', undefined, { segmentMb: 1 });
      expect(conf).to.contain('wal_keep_size = 16MB\n').and.contain('min_wal_size = 2MB\n');
      expect(conf).to.contain('checkpoint_timeout = 1min\n').and.contain('wal_log_hints = on\n');
      // A promotion asked while a standby waits to retry its stream waits out this interval.
      expect(conf).to.contain('wal_retrieve_retry_interval = 500ms\n');
      // A cluster made before 1 MB segments (16 MB): min_wal_size must stay two segments.
      expect(renderPostgresConfig(sync, 'postgres')).to.contain('min_wal_size = 32MB\n');
    });

    it('keeps more WAL with async durability, where a lagging replica is not waited for', () => {
      const conf = renderPostgresConfig(ctx({ instanceId: 'p', engine: 'postgres', durability: 'async' }), 'postgres');
      expect(conf).to.contain('wal_keep_size = 128MB\n');
    });

    it('keeps the whole fork while pg_rewind recovers a deposed primary', () => {
      const conf = renderPostgresConfig(
        ctx({ instanceId: 'p', engine: 'postgres', durability: 'sync', replicas: 1 }),
        'postgres',
        undefined,
        { segmentMb: 1, keepSize: PG_REWIND_WAL_KEEP_SIZE },
      );
      expect(conf).to.contain(`wal_keep_size = ${PG_REWIND_WAL_KEEP_SIZE}\n`);
    });
  });

  describe('walSegmentMb', () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(path.join(tmpdir(), 'sf-wal-'));
    });
    afterEach(() => rm(dir, { recursive: true, force: true }));

    it('reads the segment size from a WAL file and ignores partial and history files', async () => {
      await mkdir(path.join(dir, 'pg_wal'));
      await writeFile(path.join(dir, 'pg_wal', '00000002.history'), 'x');
      await writeFile(path.join(dir, 'pg_wal', '000000010000000000000001.partial'), 'x');
      await writeFile(path.join(dir, 'pg_wal', '000000020000000000000002'), '');
      await truncate(path.join(dir, 'pg_wal', '000000020000000000000002'), 1024 * 1024);
      expect(await walSegmentMb(dir)).to.equal(1);
    });

    it('is undefined without a pg_wal or a segment in it', async () => {
      expect(await walSegmentMb(dir)).to.equal(undefined);
      await mkdir(path.join(dir, 'pg_wal'));
      expect(await walSegmentMb(dir)).to.equal(undefined);
    });
  });
});
