/**
 * The state store over TLS (docs/tls.md): `rediss://` and `rediss-sentinel://` URLs, verified
 * against the platform CA named by SF_REDIS_CA_FILE. A real redis-server and redis-sentinel, each
 * listening on TLS only, with certificates from a platform CA.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { PlatformCa } from '../../common/platform-ca';
import { createRedis, REDIS_CA_FILE_ENV } from '../../common/redis-connection';
import { freePort } from '../helpers/free-port';
import { waitForPort } from '../helpers/redis-server';

function outcome(p: Promise<unknown>): Promise<string> {
  return p.then(
    (v) => String(v),
    (err: Error) => `ERROR ${err.message}`,
  );
}

describe('state store over TLS', function () {
  this.timeout(60_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-store-tls-'));
  const children: ChildProcess[] = [];
  const clients: Redis[] = [];
  let ca: PlatformCa;
  let tlsArgs: string[];
  let serverPort: number;
  const savedCa = process.env[REDIS_CA_FILE_ENV];

  function start(file: string, args: string[]): void {
    const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(child);
  }

  function client(url: string): Redis {
    const c = createRedis(url, {
      lazyConnect: true,
      retryStrategy: () => null,
      sentinelRetryStrategy: () => null,
      maxRetriesPerRequest: 0,
      connectTimeout: 5_000,
    });
    c.on('error', () => undefined);
    clients.push(c);
    return c;
  }

  before(async () => {
    ca = await PlatformCa.open(join(dir, 'ca'));
    const cert = await ca.ensure('state', ['localhost', '127.0.0.1']);
    tlsArgs = [
      '--tls-cert-file',
      cert.certFile,
      '--tls-key-file',
      cert.keyFile,
      '--tls-ca-cert-file',
      ca.certFile,
      '--tls-auth-clients',
      'no',
    ];
    serverPort = await freePort();
    start('redis-server', [
      '--port',
      '0',
      '--tls-port',
      String(serverPort),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      ...tlsArgs,
    ]);
    await waitForPort(serverPort);
  });

  afterEach(() => {
    for (const c of clients.splice(0)) c.disconnect();
    if (savedCa === undefined) delete process.env[REDIS_CA_FILE_ENV];
    else process.env[REDIS_CA_FILE_ENV] = savedCa;
  });

  after(async () => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  });

  it('connects with rediss:// verified against SF_REDIS_CA_FILE', async () => {
    process.env[REDIS_CA_FILE_ENV] = ca.certFile;
    const c = client(`rediss://127.0.0.1:${serverPort}`);
    expect(await outcome(c.ping())).to.equal('PONG');
  });

  it('refuses the server without the CA (the system CAs do not know it)', async () => {
    delete process.env[REDIS_CA_FILE_ENV];
    const c = client(`rediss://127.0.0.1:${serverPort}`);
    expect(await outcome(c.ping())).to.match(/^ERROR/);
  });

  it('names the variable when the CA file cannot be read', () => {
    process.env[REDIS_CA_FILE_ENV] = join(dir, 'missing.pem');
    expect(() => client(`rediss://127.0.0.1:${serverPort}`)).to.throw(REDIS_CA_FILE_ENV);
  });

  it('reaches the master through Sentinels over TLS with rediss-sentinel://', async () => {
    const sentinelPort = await freePort();
    const conf = join(dir, 'sentinel.conf');
    // Sentinel itself talks to the master over TLS (tls-replication) and serves TLS only.
    await writeFile(
      conf,
      [
        'port 0',
        `tls-port ${sentinelPort}`,
        'bind 127.0.0.1',
        `tls-cert-file ${tlsArgs[1]}`,
        `tls-key-file ${tlsArgs[3]}`,
        `tls-ca-cert-file ${tlsArgs[5]}`,
        'tls-auth-clients no',
        'tls-replication yes',
        `sentinel monitor state 127.0.0.1 ${serverPort} 1`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    start('redis-server', [conf, '--sentinel']);
    await waitForPort(sentinelPort);
    process.env[REDIS_CA_FILE_ENV] = ca.certFile;
    const c = client(`rediss-sentinel://127.0.0.1:${sentinelPort}/state`);
    expect(await outcome(c.set('k', 'v'))).to.equal('OK');
    expect(await outcome(c.get('k'))).to.equal('v');
    const plain = client(`redis-sentinel://127.0.0.1:${sentinelPort}/state`);
    expect(await outcome(plain.ping())).to.match(/^ERROR/);
  });
});
