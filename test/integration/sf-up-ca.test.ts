/**
 * `sf up` makes a platform CA on first start, issues the router's certificate from it, keeps both
 * across a restart, and `sf ca --pem` prints the CA certificate.
 */
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { createUpPlatform, type UpPlatform } from '../helpers/sf-up-platform';
import { runSfToExit } from '../helpers/sf-process';

describe('sf up platform CA', function () {
  this.timeout(180_000);
  let platform: UpPlatform;

  before(async () => {
    platform = await createUpPlatform(1);
    await platform.start();
  });
  after(async () => platform?.cleanup());

  it('creates a CA with a 0600 key and prints it with sf ca --pem', async () => {
    const caDir = path.join(platform.dataDir, 'ca');
    expect((await stat(path.join(caDir, 'ca.key'))).mode & 0o777).to.equal(0o600);
    const printed = await platform.sf(['ca', '--pem', '--data-dir', platform.dataDir]);
    expect(printed.code).to.equal(0);
    expect(printed.output).to.equal(await readFile(path.join(caDir, 'ca.crt'), 'utf8'));
    expect(new X509Certificate(printed.output).ca).to.equal(true);
    expect(platform.up!.output()).to.include('sf ca --pem');
  });

  it("issues the router's certificate for its local names, signed by the CA", async () => {
    const caDir = path.join(platform.dataDir, 'ca');
    const ca = new X509Certificate(await readFile(path.join(caDir, 'ca.crt')));
    const cert = new X509Certificate(await readFile(path.join(caDir, 'issued', 'router.crt')));
    expect(cert.verify(ca.publicKey)).to.equal(true);
    expect(cert.checkHost('localhost')).to.equal('localhost');
    expect(cert.checkIP('127.0.0.1')).to.equal('127.0.0.1');
    expect((await stat(path.join(caDir, 'issued', 'router.key'))).mode & 0o777).to.equal(0o600);
  });

  it('keeps the same CA across a restart', async () => {
    const before = await readFile(path.join(platform.dataDir, 'ca.pem'), 'utf8');
    expect(await platform.interrupt()).to.equal(0);
    await platform.start();
    expect(await readFile(path.join(platform.dataDir, 'ca.pem'), 'utf8')).to.equal(before);
  });
});

describe('sf up --control-https', function () {
  this.timeout(180_000);
  let platform: UpPlatform;

  before(async () => {
    platform = await createUpPlatform(1, ['--control-https']);
    await platform.start();
  });
  after(async () => platform?.cleanup());

  it('serves control over HTTPS with a certificate from the platform CA, verified by the CLI', async () => {
    const url = `https://127.0.0.1:${platform.ports.control}`;
    expect(platform.up!.output()).to.include(`control   ${url}`);
    const caFile = path.join(platform.dataDir, 'ca.pem');
    const ok = await runSfToExit(['cells', '--json'], { ...platform.env, SF_CONTROL_URL: url, SF_CA_FILE: caFile });
    expect(ok.code, ok.output).to.equal(0);
    expect((JSON.parse(ok.output) as Array<{ name: string }>).map((c) => c.name)).to.deep.equal(['cell-1']);
    const refused = await runSfToExit(['cells', '--json'], { ...platform.env, SF_CONTROL_URL: url, SF_CA_FILE: '' });
    expect(refused.code).to.equal(1);
  });
});
