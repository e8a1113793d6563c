import { expect } from 'chai';
import type { EngineContext } from '../../../cell/engine';
import { SIDECARS, type SidecarLaunch } from '../../../cell/sidecar';
import { spec } from '../../helpers/cell-harness';

const CREDS = {
  version: 1,
  admin: { username: 'sf_admin', password: 'admin-password-never-in-a-sidecar' },
  replication: { username: 'sf_replication', password: 'replication-password-0123' },
  monitoring: { username: 'sf_monitor', password: 'p@ss/word:with&odd=chars' },
  users: [],
};

const SECRET = '/v/sidecar.secret';

function context(
  engine: 'redis' | 'postgres',
  listenHost = '127.0.0.1',
  credentials: typeof CREDS | Omit<typeof CREDS, 'monitoring'> | null = CREDS,
): EngineContext {
  return {
    spec: spec({ instanceId: 'i-0', engine, ...(credentials ? { credentials } : {}) }),
    dataDir: '/v/data',
    volumeDir: '/v',
    port: 20001,
    listenHost,
    advertiseHost: listenHost,
  };
}

function started(launch: SidecarLaunch): Exclude<SidecarLaunch, { error: string }> {
  if (launch.error !== undefined) throw new Error(launch.error);
  return launch;
}

describe('SIDECARS', () => {
  describe('redis-exporter', () => {
    it('scrapes its engine as the monitoring user, the password only in the secrets file', () => {
      const { args, env, secret } = started(
        SIDECARS['redis-exporter'].launch(context('redis'), { host: '127.0.0.1', port: 20002 }, SECRET),
      );
      expect(args).to.deep.equal([]);
      expect(env).to.deep.equal({
        REDIS_ADDR: 'redis://127.0.0.1:20001',
        REDIS_EXPORTER_WEB_LISTEN_ADDRESS: '127.0.0.1:20002',
        REDIS_USER: 'sf_monitor',
        REDIS_PASSWORD_FILE: SECRET,
      });
      // redis_exporter's password file is JSON: address -> password.
      expect(JSON.parse(secret as string)).to.deep.equal({ 'redis://127.0.0.1:20001': CREDS.monitoring.password });
      expect(JSON.stringify(env)).to.not.contain(CREDS.admin.password);
    });

    it('reaches an engine bound to every address on loopback, and needs no password without credentials', () => {
      const { env, secret } = started(
        SIDECARS['redis-exporter'].launch(context('redis', '0.0.0.0', null), { host: '0.0.0.0', port: 20002 }, SECRET),
      );
      expect(env.REDIS_ADDR).to.equal('redis://127.0.0.1:20001');
      expect(env).to.not.have.property('REDIS_PASSWORD_FILE');
      expect(secret).to.equal(undefined);
    });

    it('refuses to run as the admin when the service has no monitoring user', () => {
      const { monitoring: _unused, ...old } = CREDS;
      const launch = SIDECARS['redis-exporter'].launch(
        context('redis', '127.0.0.1', old),
        { host: '127.0.0.1', port: 20002 },
        SECRET,
      );
      expect(launch.error).to.match(/no monitoring user/);
    });
  });

  describe('postgres-exporter', () => {
    it('connects as the monitoring role, the password only in the secrets file, never in argv or env', () => {
      const { args, env, secret } = started(
        SIDECARS['postgres-exporter'].launch(context('postgres'), { host: '127.0.0.1', port: 20002 }, SECRET),
      );
      expect(args).to.deep.equal([]);
      expect(env).to.deep.equal({
        DATA_SOURCE_URI: '127.0.0.1:20001/postgres?sslmode=disable',
        DATA_SOURCE_USER: 'sf_monitor',
        DATA_SOURCE_PASS_FILE: SECRET,
        PG_EXPORTER_WEB_LISTEN_ADDRESS: '127.0.0.1:20002',
      });
      expect(secret).to.equal(CREDS.monitoring.password);
    });
  });
});
