import { expect } from 'chai';
import type { EngineContext } from '../../../cell/engine';
import { pgSyncSettings, renderPostgresConfig } from '../../../cell/engine-postgres';
import { renderRedisConfig } from '../../../cell/engine-redis';
import { isFull, toMb } from '../../../cell/volume-meter';
import { defaultDiskSync } from '../../../protocol';
import { spec } from '../../helpers/cell-harness';

function ctx(input: Parameters<typeof spec>[0], volumeFull = false): EngineContext {
  return {
    spec: spec(input),
    dataDir: '/v/data',
    volumeDir: '/v',
    port: 20001,
    listenHost: '127.0.0.1',
    advertiseHost: '10.0.0.5',
    volumeFull,
  };
}

describe('disk sync and volume limits in engine configuration', () => {
  describe('defaultDiskSync', () => {
    it('keeps what durability meant before disk sync existed', () => {
      expect(defaultDiskSync('sync', 'redis')).to.equal('always');
      expect(defaultDiskSync('async', 'redis')).to.equal('interval');
      expect(defaultDiskSync('async', 'postgres')).to.equal('always');
    });
  });

  describe('renderRedisConfig', () => {
    it('maps always, interval and off to appendfsync always, everysec and no', () => {
      for (const [mode, fsync] of [
        ['always', 'always'],
        ['interval', 'everysec'],
        ['off', 'no'],
      ] as const)
        expect(renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis', diskSync: mode }))).to.contain(
          `appendfsync ${fsync}\n`,
        );
    });

    it('refuses writes of a full volume with maxmemory 1 and noeviction, and only then', () => {
      expect(renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis' }, true)))
        .to.contain('maxmemory 1\n')
        .and.contain('maxmemory-policy noeviction\n');
      expect(renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis' }))).to.contain('maxmemory 0\n');
    });
  });

  describe('pgSyncSettings', () => {
    it('without a standby to wait for: on/local, off, and off with fsync off', () => {
      expect(pgSyncSettings({ durability: 'async', replicas: 1, diskSync: 'always' })).to.deep.equal({
        synchronousCommit: 'local',
        fsync: true,
      });
      expect(pgSyncSettings({ durability: 'sync', replicas: 0, diskSync: 'interval' })).to.deep.equal({
        synchronousCommit: 'off',
        fsync: true,
      });
      expect(pgSyncSettings({ durability: 'async', replicas: 0, diskSync: 'off' })).to.deep.equal({
        synchronousCommit: 'off',
        fsync: false,
      });
    });

    it('with a sync standby keeps waiting for it: on, or remote_write when disk sync is relaxed', () => {
      expect(pgSyncSettings({ durability: 'sync', replicas: 1 }).synchronousCommit).to.equal('on');
      expect(pgSyncSettings({ durability: 'sync', replicas: 1, diskSync: 'interval' }).synchronousCommit).to.equal(
        'remote_write',
      );
      expect(pgSyncSettings({ durability: 'sync', replicas: 1, diskSync: 'off' })).to.deep.equal({
        synchronousCommit: 'remote_write',
        fsync: false,
      });
    });
  });

  describe('renderPostgresConfig', () => {
    it('makes transactions read-only by default on a full volume', () => {
      const full = renderPostgresConfig(ctx({ instanceId: 'p', engine: 'postgres' }, true), 'postgres');
      expect(full).to.contain('default_transaction_read_only = on\n');
      const roomy = renderPostgresConfig(ctx({ instanceId: 'p', engine: 'postgres', diskSync: 'off' }), 'postgres');
      expect(roomy).to.contain('default_transaction_read_only = off\n').and.contain('fsync = off\n');
    });
  });

  describe('volume meter', () => {
    it('rounds usage up, so one byte over the size reads as full', () => {
      expect(toMb(1)).to.equal(1);
      expect(toMb(1024 * 1024)).to.equal(1);
      expect(toMb(1024 * 1024 + 1)).to.equal(2);
      expect(isFull(2, 2)).to.equal(true);
      expect(isFull(1, 2)).to.equal(false);
    });
  });
});
