/**
 * TLS from the router to engines (docs/tls.md, Router to engine): a backend marked `tls` is
 * reached over TLS and verified against the route's backendCaFile (the platform CA); PostgreSQL
 * backends get an SSLRequest first. A backend whose certificate comes from another CA, or that
 * declines TLS, is refused and counted, never used in plaintext. With a backend certificate the
 * router presents it to an engine that asks clients for one (mTLS). Real redis-server, redis-cli,
 * postgres and psql.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PlatformCa, type IssuedCertificate } from '../../common';
import { createRouterMetrics } from '../../router';
import { freePort } from '../helpers/free-port';
import { startPostgresServer, type PostgresServerHandle } from '../helpers/postgres-server';
import { startRedisServer, waitForPort, type RedisServerHandle } from '../helpers/redis-server';
import { startRouter, type RouterHarness } from '../helpers/router-harness';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { timeout: 20_000, env: { ...process.env, PGCONNECT_TIMEOUT: '10', ...env } },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout: stdout.trim(), stderr }),
    );
  });
}

/** A redis-server with its plaintext port and a TLS port serving `cert`. */
async function startTlsRedis(
  cert: IssuedCertificate,
  caFile: string,
  authClients: 'yes' | 'no' = 'no',
): Promise<RedisServerHandle & { tlsPort: number }> {
  const tlsPort = await freePort();
  const server = await startRedisServer([
    '--tls-port',
    String(tlsPort),
    '--tls-cert-file',
    cert.certFile,
    '--tls-key-file',
    cert.keyFile,
    '--tls-ca-cert-file',
    caFile,
    '--tls-auth-clients',
    authClients,
  ]);
  await waitForPort(tlsPort);
  return { ...server, tlsPort };
}

describe('router TLS to engines', function () {
  this.timeout(120_000);
  let dir: string;
  let ca: PlatformCa;
  let routerCert: IssuedCertificate;
  let redisGood: RedisServerHandle & { tlsPort: number };
  let redisForeign: RedisServerHandle & { tlsPort: number };
  let redisMtls: RedisServerHandle & { tlsPort: number };
  let pgGood: PostgresServerHandle;
  let pgForeign: PostgresServerHandle;
  let pgPlain: PostgresServerHandle;
  let pgBound: PostgresServerHandle;
  let router: RouterHarness;
  const port: Record<string, number> = {};

  const stats = (p: number) => router.router.routeStats().find((s) => s.port === p)!;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sf-backend-tls-'));
    ca = await PlatformCa.open(join(dir, 'ca'));
    // Another CA: its certificates carry the right names but do not chain to the platform CA.
    const other = await PlatformCa.open(join(dir, 'other-ca'));
    routerCert = await ca.ensure('router', ['localhost', '127.0.0.1']);
    const engineCert = await ca.ensure('cell-a', ['localhost', '127.0.0.1']);
    const foreignCert = await other.ensure('cell-x', ['localhost', '127.0.0.1']);
    redisGood = await startTlsRedis(engineCert, ca.certFile);
    redisForeign = await startTlsRedis(foreignCert, other.certFile);
    // Asks every TLS client for a certificate signed by the platform CA (mTLS).
    redisMtls = await startTlsRedis(engineCert, ca.certFile, 'yes');
    pgGood = await startPostgresServer(engineCert);
    pgForeign = await startPostgresServer(foreignCert);
    pgPlain = await startPostgresServer();
    // The engine presents the route's own certificate, as a PostgreSQL service's engines do.
    pgBound = await startPostgresServer(routerCert);
    for (const pg of [pgGood, pgBound]) await scramUser(pg);
    for (const name of [
      'redis',
      'redisForeign',
      'redisMtls',
      'redisMtlsNoCert',
      'pg',
      'pgForeign',
      'pgPlain',
      'pgBound',
    ])
      port[name] = await freePort();
    const terminate = (extra: object = {}): Record<string, unknown> => ({
      certFile: routerCert.certFile,
      keyFile: routerCert.keyFile,
      backendCaFile: ca.certFile,
      ...extra,
    });
    const tlsBackend = (p: number) => [{ host: '127.0.0.1', port: p, tls: true }];
    router = await startRouter({
      routes: [
        { port: port.redis!, backends: tlsBackend(redisGood.tlsPort), tls: terminate() },
        { port: port.redisForeign!, backends: tlsBackend(redisForeign.tlsPort), tls: terminate() },
        {
          port: port.redisMtls!,
          backends: tlsBackend(redisMtls.tlsPort),
          tls: terminate({ backendCertFile: routerCert.certFile, backendKeyFile: routerCert.keyFile }),
        },
        { port: port.redisMtlsNoCert!, backends: tlsBackend(redisMtls.tlsPort), tls: terminate() },
        { port: port.pg!, backends: tlsBackend(pgGood.port), tls: terminate({ startup: 'postgres' }) },
        { port: port.pgForeign!, backends: tlsBackend(pgForeign.port), tls: terminate({ startup: 'postgres' }) },
        { port: port.pgPlain!, backends: tlsBackend(pgPlain.port), tls: terminate({ startup: 'postgres' }) },
        {
          port: port.pgBound!,
          backends: tlsBackend(pgBound.port),
          tls: terminate({ startup: 'postgres', backendServerName: 'localhost' }),
        },
      ],
    });
  });

  after(async () => {
    await router?.stop();
    for (const s of [redisGood, redisForeign, redisMtls]) await s?.stop();
    for (const s of [pgGood, pgForeign, pgPlain, pgBound]) await s?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const redisCli = (p: number, ...cmd: string[]): Promise<Run> =>
    run('redis-cli', ['--tls', '--cacert', ca.certFile, '-h', '127.0.0.1', '-p', String(p), ...cmd]);
  const psql = (p: number, sql: string): Promise<Run> =>
    run('psql', [
      `host=127.0.0.1 port=${p} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${ca.certFile}`,
      '-XAtq',
      '-c',
      sql,
    ]);

  it('presents the route backend certificate to an engine that asks for one (mTLS), and is refused without it', async () => {
    const withCert = await redisCli(port.redisMtls!, 'SET', 'm', 'tls');
    expect(withCert.stdout, withCert.stderr).to.equal('OK');
    // The same engine, reached by a route that presents no certificate: the engine refuses it.
    const without = await redisCli(port.redisMtlsNoCert!, 'GET', 'm');
    expect(without.stdout).to.not.equal('tls');
    // And a client without a certificate straight to the engine is refused as well.
    const direct = await redisCli(redisMtls.tlsPort, 'GET', 'm');
    expect(direct.stdout).to.not.equal('tls');
  });

  it('re-encrypts redis-cli --tls traffic to a redis engine verified against the platform CA', async () => {
    const set = await redisCli(port.redis!, 'SET', 'k', 'v');
    expect(set.stdout, set.stderr).to.equal('OK');
    // The engine saw the write on its TLS port: the router reached it there.
    const direct = await redisCli(redisGood.tlsPort, 'GET', 'k');
    expect(direct.stdout).to.equal('v');
    expect(stats(port.redis!).backendTlsErrors).to.equal(0);
  });

  it('refuses a redis engine whose certificate is not from the platform CA, and counts it', async () => {
    const before = stats(port.redisForeign!).backendTlsErrors;
    const r = await redisCli(port.redisForeign!, 'PING');
    expect(r.stdout).to.not.equal('PONG');
    expect(stats(port.redisForeign!).backendTlsErrors).to.be.greaterThan(before);
    const metrics = await fetchMetrics(router);
    expect(metrics).to.match(
      new RegExp(`sf_router_backend_tls_errors_total\\{port="${port.redisForeign}"[^}]*\\} [1-9]`),
    );
  });

  it('sends an SSLRequest to a PostgreSQL engine and speaks TLS to it', async () => {
    const r = await psql(port.pg!, 'select ssl from pg_stat_ssl where pid = pg_backend_pid()');
    expect(r.code, r.stderr).to.equal(0);
    // The engine's own view of the router's connection: encrypted.
    expect(r.stdout).to.equal('t');
  });

  it('keeps SCRAM channel binding when the engine presents the route certificate, and only then', async () => {
    const bound = (p: number): Promise<Run> =>
      run(
        'psql',
        [
          `host=127.0.0.1 port=${p} user=u dbname=postgres sslmode=verify-full sslrootcert=${ca.certFile} channel_binding=require`,
          '-XAtq',
          '-c',
          'select ssl from pg_stat_ssl where pid = pg_backend_pid()',
        ],
        { PGPASSWORD: 'pw' },
      );
    // SCRAM-SHA-256-PLUS bound to the certificate psql saw at the router, checked by the engine
    // against its own: the same certificate, verified by the route's backendServerName.
    const same = await bound(port.pgBound!);
    expect(same.stdout, same.stderr).to.equal('t');
    // An engine with another certificate (the cell's) cannot check the binding.
    const other = await bound(port.pg!);
    expect(other.code).to.not.equal(0);
    expect(other.stderr).to.match(/channel binding/);
  });

  it('refuses a PostgreSQL engine with a foreign certificate or without TLS', async () => {
    for (const p of [port.pgForeign!, port.pgPlain!]) {
      const before = stats(p).backendTlsErrors;
      const r = await psql(p, 'select 1');
      expect(r.code).to.not.equal(0);
      expect(stats(p).backendTlsErrors).to.be.greaterThan(before);
    }
  });
});

/** A password user `u` (SCRAM) besides the trusted superuser, so a login can bind to TLS. */
async function scramUser(pg: PostgresServerHandle): Promise<void> {
  const sql = (q: string): Promise<Run> =>
    run('psql', [`host=127.0.0.1 port=${pg.port} user=postgres dbname=postgres sslmode=disable`, '-XAtq', '-c', q]);
  const hba = join(pg.dir, 'data', 'pg_hba.conf');
  writeFileSync(hba, `host all u 127.0.0.1/32 scram-sha-256\n${readFileSync(hba, 'utf8')}`);
  for (const q of [
    "set password_encryption = 'scram-sha-256'; create role u login password 'pw'",
    'select pg_reload_conf()',
  ]) {
    const r = await sql(q);
    if (r.code !== 0) throw new Error(`${q}: ${r.stderr}`);
  }
}

function fetchMetrics(router: RouterHarness): Promise<string> {
  return createRouterMetrics(router.router, false).metrics();
}
