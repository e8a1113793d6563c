import { expect } from 'chai';
import type { EngineContext } from '../../../cell/engine';
import { SIDECARS } from '../../../cell/sidecar';
import { spec } from '../../helpers/cell-harness';

const CREDS = {
  version: 1,
  admin: { username: 'sf_admin', password: 'p@ss/word:with&odd=chars' },
  replication: { username: 'sf_replication', password: 'replication-password-0123' },
  users: [],
};

function context(engine: 'redis' | 'postgres', listenHost = '127.0.0.1', withCreds = true): EngineContext {
  return {
    spec: spec({ instanceId: 'i-0', engine, ...(withCreds ? { credentials: CREDS } : {}) }),
    dataDir: '/v/data',
    volumeDir: '/v',
    port: 20001,
    listenHost,
    advertiseHost: listenHost,
  };
}

describe('SIDECARS', () => {
  describe('redis-exporter', () => {
    it('scrapes its engine as the management user, the password in the environment only', () => {
      const { args, env } = SIDECARS['redis-exporter'].launch(context('redis'), { host: '127.0.0.1', port: 20002 });
      expect(args.join(' ')).to.not.contain(CREDS.admin.password);
      expect(env).to.deep.equal({
        REDIS_ADDR: 'redis://127.0.0.1:20001',
        REDIS_EXPORTER_WEB_LISTEN_ADDRESS: '127.0.0.1:20002',
        REDIS_USER: 'sf_admin',
        REDIS_PASSWORD: CREDS.admin.password,
      });
    });

    it('reaches an engine bound to every address on loopback, and needs no password without credentials', () => {
      const { env } = SIDECARS['redis-exporter'].launch(context('redis', '0.0.0.0', false), {
        host: '0.0.0.0',
        port: 20002,
      });
      expect(env.REDIS_ADDR).to.equal('redis://127.0.0.1:20001');
      expect(env).to.not.have.property('REDIS_PASSWORD');
    });
  });

  describe('postgres-exporter', () => {
    it('connects as the superuser with the URL-encoded password in DATA_SOURCE_NAME, never in argv', () => {
      const { args, env } = SIDECARS['postgres-exporter'].launch(context('postgres'), {
        host: '127.0.0.1',
        port: 20002,
      });
      expect(args).to.deep.equal([]);
      const url = new URL(env.DATA_SOURCE_NAME);
      expect(url.username).to.equal('postgres');
      expect(decodeURIComponent(url.password)).to.equal(CREDS.admin.password);
      expect(url.host).to.equal('127.0.0.1:20001');
      expect(env.PG_EXPORTER_WEB_LISTEN_ADDRESS).to.equal('127.0.0.1:20002');
    });
  });
});
