import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  adminTokenFile,
  controlAddressKey,
  controlUrlForListen,
  discoverAdminToken,
  ensureAdminToken,
} from '../../../control/admin-token';

describe('admin-token', function () {
  let home: string;
  beforeEach(() => (home = mkdtempSync(join(tmpdir(), 'sf-home-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  describe('ensureAdminToken', function () {
    it('writes a new token to SF_HOME/admin-tokens/<host>-<port> with mode 0600 and reuses it', async function () {
      const env = { SF_HOME: home };
      const first = await ensureAdminToken(env, 'http://127.0.0.1:7600');
      expect(first.file).to.equal(join(home, 'admin-tokens', '127.0.0.1-7600'));
      expect(readFileSync(first.file as string, 'utf8').trim()).to.equal(first.token);
      expect(statSync(first.file as string).mode & 0o777).to.equal(0o600);
      expect(statSync(join(home, 'admin-tokens')).mode & 0o777).to.equal(0o700);
      expect((await ensureAdminToken(env, 'http://127.0.0.1:7600')).token).to.equal(first.token);
    });

    it('gives two controls on one machine two token files', async function () {
      const env = { SF_HOME: home };
      const a = await ensureAdminToken(env, controlUrlForListen('127.0.0.1', 7600));
      const b = await ensureAdminToken(env, controlUrlForListen('127.0.0.1', 7700));
      expect(a.file).to.not.equal(b.file);
      expect(a.token).to.not.equal(b.token);
      expect(await discoverAdminToken({ SF_HOME: home, SF_CONTROL_URL: 'http://127.0.0.1:7700' })).to.equal(b.token);
      expect(await discoverAdminToken({ SF_HOME: home, SF_CONTROL_URL: 'http://localhost:7600/' })).to.equal(a.token);
      expect(await discoverAdminToken({ SF_HOME: home })).to.equal(a.token); // the default URL
    });

    it('prefers SF_API_TOKEN and writes nothing', async function () {
      expect(
        await ensureAdminToken({ SF_HOME: home, SF_API_TOKEN: 'from-env' }, 'http://127.0.0.1:7600'),
      ).to.deep.equal({ token: 'from-env', file: null });
    });
  });

  describe('discoverAdminToken', function () {
    it('reads the file of the control it talks to, else null', async function () {
      const env = { SF_HOME: home, SF_CONTROL_URL: 'http://127.0.0.1:7611' };
      expect(await discoverAdminToken(env)).to.equal(null);
      const { token } = await ensureAdminToken(env, 'http://127.0.0.1:7611');
      expect(await discoverAdminToken(env)).to.equal(token);
      expect(await discoverAdminToken({ ...env, SF_CONTROL_URL: 'http://127.0.0.1:7612' })).to.equal(null);
    });

    it('falls back to a machine-wide admin-token file for loopback controls only', async function () {
      writeFileSync(join(home, 'admin-token'), 'legacy-token\n');
      expect(await discoverAdminToken({ SF_HOME: home, SF_CONTROL_URL: 'http://127.0.0.1:7613' })).to.equal(
        'legacy-token',
      );
      expect(await discoverAdminToken({ SF_HOME: home, SF_CONTROL_URL: 'http://10.1.2.3:7600' })).to.equal(null);
    });
  });

  describe('controlAddressKey', function () {
    it('names a file after host and port only', function () {
      expect(controlAddressKey('http://127.0.0.1:7600/v3/info?x=1')).to.equal('127.0.0.1-7600');
      expect(controlAddressKey('http://[::1]:7600')).to.equal('__1-7600');
      expect(controlAddressKey('https://ctl.example.com')).to.equal('ctl.example.com-443');
      expect(controlAddressKey('../../etc/passwd')).to.equal('.._.._etc_passwd');
      expect(adminTokenFile('http://[::1]:7600', { SF_HOME: home })).to.equal(join(home, 'admin-tokens', '__1-7600'));
    });

    it('reaches a wildcard listener over loopback', function () {
      expect(controlUrlForListen('0.0.0.0', 7600)).to.equal('http://127.0.0.1:7600');
      expect(controlUrlForListen('::', 7600)).to.equal('http://[::1]:7600');
      expect(controlUrlForListen('10.0.0.1', 7600)).to.equal('http://10.0.0.1:7600');
    });
  });
});
