import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PlatformCa } from '../../../common';

describe('PlatformCa', function () {
  this.timeout(30_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sf-ca-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  describe('open', () => {
    it('creates a CA whose key only its owner can read', async () => {
      const ca = await PlatformCa.open(dir);
      expect(statSync(ca.keyFile).mode & 0o777).to.equal(0o600);
      const cert = new X509Certificate(await ca.pem());
      expect(cert.ca).to.equal(true);
      expect(cert.subject).to.include('Service Foundry platform CA');
    });

    it('opens the same CA again', async () => {
      const first = await (await PlatformCa.open(dir)).pem();
      expect(await (await PlatformCa.open(dir)).pem()).to.equal(first);
    });

    it('takes the operator CA and refuses a leaf certificate as one', async () => {
      const ca = await PlatformCa.open(join(dir, 'a'));
      const leaf = await ca.ensure('router', ['localhost']);
      const operator = await PlatformCa.open(join(dir, 'b'), {}, { certFile: ca.certFile, keyFile: ca.keyFile });
      expect(await operator.pem()).to.equal(await ca.pem());
      const err = await PlatformCa.open(join(dir, 'c'), {}, leaf).catch((e: Error) => e);
      expect((err as Error).message).to.match(/not a CA certificate/);
    });
  });

  describe('ensure', () => {
    it('issues a certificate for the names, signed by the CA, key 0600', async () => {
      const ca = await PlatformCa.open(dir);
      const issued = await ca.ensure('router', ['localhost', '127.0.0.1', '::1']);
      expect(issued.renewed).to.equal(true);
      expect(statSync(issued.keyFile).mode & 0o777).to.equal(0o600);
      const cert = new X509Certificate(readFileSync(issued.certFile));
      const caCert = new X509Certificate(await ca.pem());
      expect(cert.verify(caCert.publicKey)).to.equal(true);
      expect(cert.ca).to.equal(false);
      expect(cert.checkHost('localhost')).to.equal('localhost');
      expect(cert.checkIP('127.0.0.1')).to.equal('127.0.0.1');
      expect(cert.checkIP('::1')).to.not.equal(undefined);
      expect(cert.checkHost('example.com')).to.equal(undefined);
    });

    it('keeps a valid certificate and renews one near expiry or with other names', async () => {
      const ca = await PlatformCa.open(dir, { certDays: 90, renewBeforeDays: 30 });
      await ca.ensure('router', ['localhost']);
      expect((await ca.ensure('router', ['localhost'])).renewed).to.equal(false);
      expect((await ca.ensure('router', ['localhost', '127.0.0.1'])).renewed).to.equal(true);
      const in61Days = new Date(Date.now() + 61 * 86_400_000);
      const before = readFileSync(join(dir, 'issued', 'router.crt'), 'utf8');
      const renewed = await ca.ensure('router', ['localhost', '127.0.0.1'], in61Days);
      expect(renewed.renewed).to.equal(true);
      expect(readFileSync(renewed.certFile, 'utf8')).to.not.equal(before);
    });

    it('issues a new key and certificate on demand while the current one is still good', async () => {
      const ca = await PlatformCa.open(dir);
      const first = await ca.ensure('svc', ['svc', 'localhost']);
      const cert = readFileSync(first.certFile, 'utf8');
      const key = readFileSync(first.keyFile, 'utf8');
      expect((await ca.ensure('svc', ['svc', 'localhost'])).renewed).to.equal(false);
      const forced = await ca.ensure('svc', ['svc', 'localhost'], new Date(), true);
      expect(forced.renewed).to.equal(true);
      expect(readFileSync(forced.certFile, 'utf8')).to.not.equal(cert);
      expect(readFileSync(forced.keyFile, 'utf8')).to.not.equal(key);
      expect(statSync(forced.keyFile).mode & 0o777).to.equal(0o600);
    });

    it('renews a certificate another CA signed', async () => {
      const other = await PlatformCa.open(join(dir, 'other'));
      const mine = await PlatformCa.open(join(dir, 'mine'));
      await other.ensure('router', ['localhost']);
      // Same issued directory name, different CA: the certificate is not this CA's.
      const moved = await PlatformCa.open(join(dir, 'other'), {}, { certFile: mine.certFile, keyFile: mine.keyFile });
      expect((await moved.ensure('router', ['localhost'])).renewed).to.equal(true);
    });

    it('refuses a name that is not a file name', async () => {
      const ca = await PlatformCa.open(dir);
      const err = await ca.ensure('../x', ['localhost']).catch((e: Error) => e);
      expect((err as Error).message).to.match(/certificate name/);
    });
  });
});
