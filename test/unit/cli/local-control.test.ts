import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { readLocalControl, removeLocalControl, resolveControl, writeLocalControl } from '../../../cli/local-control';

describe('the local control record (sf up -> CLI)', () => {
  let home: string;
  beforeEach(() => (home = mkdtempSync(join(tmpdir(), 'sf-local-control-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('makes the CLI use the https URL and CA that sf up recorded for the default address', async () => {
    const env = { SF_HOME: home };
    expect(await resolveControl(env)).to.deep.equal({ url: 'http://127.0.0.1:7600', caFile: undefined });
    await writeLocalControl(env, 'http://127.0.0.1:7600', { url: 'https://127.0.0.1:7600', ca_file: '/d/ca.pem' });
    expect(await resolveControl(env)).to.deep.equal({ url: 'https://127.0.0.1:7600', caFile: '/d/ca.pem' });
    // SF_CA_FILE wins over the record; SF_CONTROL_URL over the default address.
    expect((await resolveControl({ ...env, SF_CA_FILE: '/x.pem' })).caFile).to.equal('/x.pem');
    const other = await resolveControl({ ...env, SF_CONTROL_URL: 'http://127.0.0.1:7700' });
    expect(other).to.deep.equal({ url: 'http://127.0.0.1:7700', caFile: undefined });
    await removeLocalControl(env, 'http://127.0.0.1:7600');
    expect(await readLocalControl('http://127.0.0.1:7600', env)).to.equal(undefined);
  });

  it("finds the CA of an https SF_CONTROL_URL by its address, else sf up's default data dir", async () => {
    const env = { SF_HOME: home, SF_CONTROL_URL: 'https://localhost:7711' };
    if (process.getuid?.() !== 0) expect((await resolveControl(env)).caFile).to.equal(join(home, 'up', 'ca.pem'));
    await writeLocalControl(env, 'http://127.0.0.1:7711', { url: 'https://127.0.0.1:7711', ca_file: '/b/ca.pem' });
    expect(await resolveControl(env)).to.deep.equal({ url: 'https://localhost:7711', caFile: '/b/ca.pem' });
  });
});
