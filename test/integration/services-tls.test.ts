/**
 * TLS per service (docs/tls.md): with a platform CA, control gives a service with `tls: required`
 * a route that terminates TLS with a certificate it issued for the service, and refuses plaintext
 * clients; `optional` serves both, `off` plaintext only; service keys carry the CA and `rediss://`
 * / `sslmode=verify-full` URIs. Real redis-server, PostgreSQL, redis-cli and psql throughout.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startControlHarness } from '../helpers/control-harness';
import { FAST_SERVICE_PLANE, useServiceCluster } from '../helpers/service-cluster';
import type { ServiceView } from '../../control';

const PSQL = '/usr/lib/postgresql/15/bin/psql';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

interface KeyBody {
  uri: string;
  username: string;
  password: string;
  tls: string;
  ca_certificate?: string;
  ca_file?: string;
}

function run(file: string, args: string[], timeoutMs = 30_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { timeout: timeoutMs, env: { PATH: process.env.PATH ?? '', PGCONNECT_TIMEOUT: '10' } },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('services with TLS', function () {
  this.timeout(300_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-services-tls-'));
  const caDir = join(dir, 'ca');
  const caFile = join(caDir, 'ca.crt');
  const cluster = useServiceCluster({ cells: 1, services: { platformCa: { dir: caDir } } });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function create(name: string, engine: string, tls?: string): Promise<ServiceView> {
    const res = await cluster().api<ServiceView>('POST', '/v3/service_instances', {
      name,
      engine,
      replicas: 0,
      ...(tls ? { tls } : {}),
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    return cluster().waitForService(name, 120_000);
  }

  async function key(service: string, name = 'app'): Promise<KeyBody> {
    const res = await cluster().api<KeyBody>('POST', `/v3/service_instances/${service}/keys`, { name });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    return res.body;
  }

  describe('redis with tls required (the default with a platform CA)', () => {
    let view: ServiceView;
    let creds: KeyBody;
    before(async () => {
      view = await create('cache', 'redis');
      creds = await key('cache');
    });

    it('shows the policy in the service', () => {
      expect(view.tls).to.equal('required');
    });

    it('gives a service key a rediss:// URI and the CA', () => {
      expect(creds.tls).to.equal('required');
      expect(creds.uri).to.match(/^rediss:\/\//);
      expect(creds.ca_certificate).to.equal(readFileSync(caFile, 'utf8'));
      expect(creds.ca_file).to.equal(caFile);
    });

    it('serves redis-cli --tls verified against the platform CA', async () => {
      const r = await run('redis-cli', ['-u', creds.uri, '--cacert', caFile, '--no-auth-warning', 'ping']);
      expect(r.stdout.trim(), r.stderr).to.equal('PONG');
      const cert = new X509Certificate(readFileSync(join(caDir, 'issued', 'service-cache.crt')));
      expect(cert.subjectAltName).to.include('DNS:cache');
    });

    it('refuses a plaintext client', async () => {
      const plain = creds.uri.replace(/^rediss:/, 'redis:');
      const r = await run('redis-cli', ['-u', plain, '--no-auth-warning', 'ping']);
      expect(r.stdout.trim()).to.not.equal('PONG');
    });

    it('refuses a client that does not trust the certificate', async () => {
      const r = await run('redis-cli', ['-u', creds.uri, '--no-auth-warning', 'ping']);
      expect(r.stdout.trim()).to.not.equal('PONG');
    });
  });

  describe('redis with tls optional and off', () => {
    it('serves TLS and plaintext clients with optional', async () => {
      const view = await create('both', 'redis', 'optional');
      expect(view.tls).to.equal('optional');
      const creds = await key('both');
      const tls = await run('redis-cli', ['-u', creds.uri, '--cacert', caFile, '--no-auth-warning', 'ping']);
      expect(tls.stdout.trim(), tls.stderr).to.equal('PONG');
      const plain = await run('redis-cli', [
        '-u',
        creds.uri.replace(/^rediss:/, 'redis:'),
        '--no-auth-warning',
        'ping',
      ]);
      expect(plain.stdout.trim(), plain.stderr).to.equal('PONG');
    });

    it('serves plaintext only with off, and its keys have a redis:// URI', async () => {
      const view = await create('plain', 'redis', 'off');
      expect(view.tls).to.equal('off');
      const creds = await key('plain');
      expect(creds.uri).to.match(/^redis:\/\//);
      expect(creds.ca_certificate).to.equal(undefined);
      const plain = await run('redis-cli', ['-u', creds.uri, '--no-auth-warning', 'ping']);
      expect(plain.stdout.trim(), plain.stderr).to.equal('PONG');
      const tls = await run(
        'redis-cli',
        ['-u', creds.uri.replace(/^redis:/, 'rediss:'), '--cacert', caFile, '--no-auth-warning', 'ping'],
        5_000,
      );
      // A plaintext engine never answers a ClientHello: redis-cli waits until it is stopped.
      expect(tls.stdout.trim()).to.not.equal('PONG');
    });

    it('changes optional to required on a running service, and refuses off to required naming tls', async () => {
      const creds = await key('both', 'policy');
      const plainUri = creds.uri.replace(/^rediss:/, 'redis:');
      const set = await run('redis-cli', ['-u', creds.uri, '--cacert', caFile, '--no-auth-warning', 'set', 'k', 'v']);
      expect(set.stdout.trim(), set.stderr).to.equal('OK');
      const changed = await cluster().api<ServiceView>('PATCH', '/v3/service_instances/both', { tls: 'required' });
      expect(changed.status, JSON.stringify(changed.body)).to.equal(200);
      expect(changed.body.tls).to.equal('required');
      // The route follows within a push; until then plaintext may still be served.
      const deadline = Date.now() + 60_000;
      let plain = await run('redis-cli', ['-u', plainUri, '--no-auth-warning', 'get', 'k'], 10_000);
      while (plain.stdout.trim() === 'v') {
        if (Date.now() > deadline) throw new Error('plaintext still served 60 s after the change to required');
        await new Promise((r) => setTimeout(r, 500));
        plain = await run('redis-cli', ['-u', plainUri, '--no-auth-warning', 'get', 'k'], 10_000);
      }
      const tls = await run('redis-cli', ['-u', creds.uri, '--cacert', caFile, '--no-auth-warning', 'get', 'k']);
      expect(tls.stdout.trim(), tls.stderr).to.equal('v');

      const refused = await cluster().api<{ error: { field: string; message: string } }>(
        'PATCH',
        '/v3/service_instances/plain',
        { tls: 'required' },
      );
      expect(refused.status).to.equal(400);
      expect(refused.body.error.field).to.equal('tls');
      expect(refused.body.error.message).to.match(/plaintext port/);
      const unchanged = await cluster().api<ServiceView>('GET', '/v3/service_instances/plain');
      expect(unchanged.body.tls).to.equal('off');
      const bad = await cluster().api<{ error: { field: string } }>('PATCH', '/v3/service_instances/plain', {
        tls: 'sometimes',
      });
      expect(bad.status).to.equal(400);
      expect(bad.body.error.field).to.equal('tls');
    });
  });

  describe('postgres with tls required', () => {
    let creds: KeyBody;
    before(async () => {
      await create('db', 'postgres');
      creds = await key('db');
    });

    it('serves psql with the key URI (sslmode=verify-full)', async () => {
      expect(creds.uri).to.include('sslmode=verify-full');
      const r = await run(PSQL, [creds.uri, '-XAtq', '-c', 'select 41 + 1']);
      expect(r.stdout.trim(), r.stderr).to.equal('42');
      const info = await run(PSQL, [creds.uri, '-X', '-c', '\\conninfo']);
      expect(info.stdout, info.stderr).to.match(/SSL connection \(protocol: TLSv1\.[23]/);
    });

    it('refuses a plaintext psql with a reason', async () => {
      const plain = creds.uri.replace(/\?.*$/, '?sslmode=disable');
      const r = await run(PSQL, [plain, '-XAtq', '-c', 'select 1']);
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.include('requires TLS');
    });
  });

  describe('validation', () => {
    it('refuses an unknown policy with 400 naming the field', async () => {
      const res = await cluster().api<{ error: { field: string } }>('POST', '/v3/service_instances', {
        name: 'bad',
        engine: 'redis',
        tls: 'sometimes',
      });
      expect(res.status).to.equal(400);
      expect(res.body.error.field).to.equal('tls');
    });

    it('refuses TLS on a control without a platform CA, and defaults to off there', async () => {
      const other = await startControlHarness(
        {
          defaultReservablePorts: `${cluster().routePorts[0]}-${cluster().routePorts[1]}`,
          services: { ...FAST_SERVICE_PLANE, holderId: 'no-ca' },
        },
        cluster().redis,
      );
      try {
        const refused = await other.api<{ error: { field: string; message: string } }>(
          'POST',
          '/v3/service_instances',
          { name: 'needs-ca', engine: 'redis', replicas: 0, tls: 'required' },
        );
        expect(refused.status).to.equal(400);
        expect(refused.body.error.field).to.equal('tls');
        const created = await other.api<ServiceView>('POST', '/v3/service_instances', {
          name: 'no-ca',
          engine: 'redis',
          replicas: 0,
        });
        expect(created.status, JSON.stringify(created.body)).to.equal(201);
        expect(created.body.tls).to.equal('off');
      } finally {
        await other.stop();
      }
    });
  });
});
