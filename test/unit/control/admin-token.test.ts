import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { discoverAdminToken, ensureAdminToken } from '../../../control/admin-token';

describe('admin-token', function () {
  let home: string;
  beforeEach(() => (home = mkdtempSync(join(tmpdir(), 'sf-home-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  describe('ensureAdminToken', function () {
    it('writes a new token to SF_HOME/admin-token with mode 0600 and reuses it', async function () {
      const env = { SF_HOME: home };
      const first = await ensureAdminToken(env);
      expect(first.file).to.equal(join(home, 'admin-token'));
      expect(readFileSync(first.file as string, 'utf8').trim()).to.equal(first.token);
      expect(statSync(first.file as string).mode & 0o777).to.equal(0o600);
      expect((await ensureAdminToken(env)).token).to.equal(first.token);
    });

    it('prefers SF_API_TOKEN and writes nothing', async function () {
      expect(await ensureAdminToken({ SF_HOME: home, SF_API_TOKEN: 'from-env' })).to.deep.equal({
        token: 'from-env',
        file: null,
      });
    });
  });

  describe('discoverAdminToken', function () {
    it('reads the file when SF_API_TOKEN is unset, else null', async function () {
      expect(await discoverAdminToken({ SF_HOME: home })).to.equal(null);
      const { token } = await ensureAdminToken({ SF_HOME: home });
      expect(await discoverAdminToken({ SF_HOME: home })).to.equal(token);
    });
  });
});
