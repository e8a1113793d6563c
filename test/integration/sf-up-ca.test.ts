/**
 * `sf up` makes a platform CA on first start, issues the router's certificate from it, keeps both
 * across a restart, and `sf ca --pem` prints the CA certificate. Control speaks HTTPS by default,
 * verified by the CLI on the same machine without settings; `--no-control-https` turns it off.
 */
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createUpPlatform, type UpPlatform } from '../helpers/sf-up-platform';
import { runSfToExit } from '../helpers/sf-process';

const run = promisify(execFile);

describe('sf up platform CA and control over HTTPS (the default)', function () {
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

  it('serves control over HTTPS with a certificate from the platform CA, verified by the CLI without settings', async () => {
    const url = `https://127.0.0.1:${platform.ports.control}`;
    const caFile = path.join(platform.dataDir, 'ca.pem');
    const banner = platform.up!.output();
    expect(banner).to.include(`control   ${url}`);
    // How to reach it with curl, verified against the platform CA.
    expect(banner).to.include(`curl --cacert ${caFile} -H "authorization: Bearer $(cat `);
    expect(banner).to.include(`${url}/v3/cells`);
    // The platform's env names the URL and SF_HOME only: the CA comes from what sf up recorded there.
    expect(platform.env.SF_CA_FILE).to.equal(undefined);
    const ok = await platform.sf(['cells', '--json']);
    expect(ok.code, ok.output).to.equal(0);
    expect((JSON.parse(ok.output) as Array<{ name: string }>).map((c) => c.name)).to.deep.equal(['cell-1']);
    const record = JSON.parse(
      await readFile(path.join(platform.home, 'controls', `127.0.0.1-${platform.ports.control}.json`), 'utf8'),
    ) as { url: string; ca_file: string };
    // With the client certificate Prometheus scrapes exporter sidecars with (sf prometheus-config).
    const issued = path.join(platform.dataDir, 'ca', 'issued');
    expect(record).to.deep.equal({
      url,
      ca_file: caFile,
      scrape_cert_file: path.join(issued, 'prometheus.crt'),
      scrape_key_file: path.join(issued, 'prometheus.key'),
    });

    // The banner's curl line, as a user copies it.
    const curlLine = banner
      .split('\n')
      .find((l) => l.includes('curl --cacert'))!
      .trim();
    const curl = await run('bash', ['-c', curlLine], { env: { PATH: process.env.PATH ?? '' } });
    expect(
      (JSON.parse(curl.stdout) as { resources: Array<{ name: string }> }).resources.map((c) => c.name),
    ).to.deep.equal(['cell-1']);

    // Another home (no record, no CA) with the admin token: the certificate cannot be verified.
    const token = (
      await readFile(path.join(platform.home, 'admin-tokens', `127.0.0.1-${platform.ports.control}`), 'utf8')
    ).trim();
    const elsewhere = await mkdtemp(path.join(tmpdir(), 'sf-up-ca-other-'));
    try {
      const refused = await runSfToExit(['cells', '--json'], {
        ...platform.env,
        SF_HOME: elsewhere,
        SF_API_TOKEN: token,
        SF_CA_FILE: '',
      });
      expect(refused.code).to.equal(1);
      expect(refused.output).to.match(/cannot reach control/);
      // Named explicitly, the CA verifies it again.
      const named = await runSfToExit(['cells', '--json'], {
        ...platform.env,
        SF_HOME: elsewhere,
        SF_API_TOKEN: token,
        SF_CA_FILE: caFile,
      });
      expect(named.code, named.output).to.equal(0);
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
    // Plain HTTP to the control port gets no HTTP answer.
    const plain = await fetch(`http://127.0.0.1:${platform.ports.control}/health`).then(
      (r) => `answered ${r.status}`,
      () => 'refused',
    );
    expect(plain).to.equal('refused');
  });

  it('writes a Prometheus configuration that scrapes control over https with the platform CA', async () => {
    const res = await platform.sf(['prometheus-config']);
    expect(res.code, res.output).to.equal(0);
    expect(res.output).to.include('    scheme: https');
    expect(res.output).to.include(`      ca_file: "${path.join(platform.dataDir, 'ca.pem')}"`);
  });
});

describe('sf up --no-control-https', function () {
  this.timeout(180_000);
  let platform: UpPlatform;

  before(async () => {
    platform = await createUpPlatform(1, ['--no-control-https']);
    await platform.start();
  });
  after(async () => platform?.cleanup());

  it('serves control over plain HTTP, and the CLI reaches it', async () => {
    const url = `http://127.0.0.1:${platform.ports.control}`;
    expect(platform.up!.output()).to.include(`control   ${url}`);
    expect(platform.up!.output()).to.include('plain HTTP (--no-control-https)');
    expect((await fetch(`${url}/health`)).status).to.equal(200);
    const ok = await platform.sf(['cells', '--json']);
    expect(ok.code, ok.output).to.equal(0);
    expect(existsSync(path.join(platform.dataDir, 'ca', 'issued', 'control.crt'))).to.equal(false);
  });
});
