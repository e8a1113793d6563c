/**
 * The control API over HTTPS (docs/tls.md): uWebSockets.js serves TLS with a certificate from the
 * platform CA; the `sf` CLI verifies it against SF_CA_FILE, refuses it without the CA, and a
 * plaintext HTTP request to the port gets no answer. Real control, redis-server and CLI processes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { PlatformCa } from '../../common/platform-ca';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { runSfToExit } from '../helpers/sf-process';

describe('control over HTTPS', function () {
  this.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-control-https-'));
  let redis: RedisServerHandle;
  let control: ControlHarness;
  let caFile: string;

  before(async () => {
    const ca = await PlatformCa.open(join(dir, 'ca'));
    caFile = ca.certFile;
    const cert = await ca.ensure('control', ['localhost', '127.0.0.1']);
    const tls = { certFile: cert.certFile, keyFile: cert.keyFile, caFile };
    redis = await startRedisServer();
    // The harness's own client verifies against tls.caFile: its first request already went over https.
    control = await startControlHarness({ tls }, redis);
  });

  after(async () => {
    await control?.stop();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const env = (extra: Record<string, string>): Record<string, string> => ({
    SF_CONTROL_URL: control.control.url,
    SF_API_TOKEN: ADMIN_TOKEN,
    SF_HOME: dir,
    SF_CA_FILE: '',
    ...extra,
  });

  it('serves https and the CLI verifies it against SF_CA_FILE', async () => {
    expect(control.control.url).to.match(/^https:\/\/127\.0\.0\.1:\d+$/);
    const res = await runSfToExit(['services', '--json'], env({ SF_CA_FILE: caFile }));
    expect(res.code, res.output).to.equal(0);
    expect(JSON.parse(res.output)).to.deep.equal([]);
  });

  it('is refused by the CLI without the CA', async () => {
    const res = await runSfToExit(['services', '--json'], env({}));
    expect(res.code).to.equal(1);
    expect(res.output).to.match(/cannot reach control.*(CERT|certificate|SIGNATURE)/i);
  });

  it('does not answer plain HTTP on its port', async () => {
    const plain = control.control.url.replace(/^https:/, 'http:');
    const outcome = await fetch(`${plain}/health`, { signal: AbortSignal.timeout(5_000) }).then(
      (r) => `status ${r.status}`,
      () => 'no answer',
    );
    expect(outcome).to.equal('no answer');
  });
});
