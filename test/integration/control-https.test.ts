/**
 * The control API over HTTPS (docs/tls.md): uWebSockets.js serves TLS with a certificate from the
 * platform CA; the `sf` CLI verifies it against SF_CA_FILE, refuses it without the CA, and a
 * plaintext HTTP request to the port gets no answer. Real control, redis-server and CLI processes.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { expect } from 'chai';
import { PlatformCa } from '../../common/platform-ca';
import { HttpServer } from '../../control/api/http-server';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { runSfToExit } from '../helpers/sf-process';

describe('control over HTTPS', function () {
  this.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-control-https-'));
  let redis: RedisServerHandle;
  let control: ControlHarness;
  let caFile: string;
  let ca: PlatformCa;

  before(async () => {
    ca = await PlatformCa.open(join(dir, 'ca'));
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

  it('serves a renewed certificate to new connections while an open one keeps working', async () => {
    const old = await openHealthSession(control.control.port, caFile);
    try {
      const before = old.fingerprint;
      const renewed = await ca.ensure('control', ['localhost', '127.0.0.1'], new Date(), true);
      const onDisk = new X509Certificate(readFileSync(renewed.certFile)).fingerprint256;
      expect(onDisk).to.not.equal(before);
      await control.control.checkTls();
      const fresh = await openHealthSession(control.control.port, caFile);
      try {
        expect(fresh.fingerprint, 'a new connection gets the renewed certificate').to.equal(onDisk);
        expect(await fresh.health()).to.equal(200);
      } finally {
        fresh.socket.destroy();
      }
      // The connection opened before the renewal was neither cut nor moved to the new certificate.
      expect(await old.health(), 'the open connection still answers').to.equal(200);
      expect(old.socket.destroyed, 'and stays open').to.equal(false);
    } finally {
      old.socket.destroy();
    }
  });

  it('keeps its certificate when the renewed files do not belong together', async () => {
    const cert = await ca.ensure('control', ['localhost', '127.0.0.1']);
    const other = await ca.ensure('other', ['localhost']);
    const server = new HttpServer({ authenticator: { authenticate: async () => null }, tls: cert });
    try {
      const port = await server.listen('127.0.0.1', 0);
      const served = (await openHealthSession(port, caFile)).close();
      // The key of another certificate, as a renewal caught between its two writes would look.
      let refused = '';
      await server
        .reloadTls({ certFile: cert.certFile, keyFile: other.keyFile })
        .catch((err: Error) => (refused = err.message));
      expect(refused).to.match(/is not the key of/);
      expect((await openHealthSession(port, caFile)).close(), 'the certificate in force stays').to.equal(served);
    } finally {
      server.close();
    }
  });

  it('refuses a second server on its port instead of sharing the clients', async () => {
    const second = new HttpServer({ authenticator: { authenticate: async () => null } });
    let failure = '';
    await second.listen('127.0.0.1', control.control.port).catch((err: Error) => (failure = err.message));
    second.close();
    expect(failure).to.match(/cannot listen on 127\.0\.0\.1:\d+/);
    expect(await (await openHealthSession(control.control.port, caFile)).closeAfterHealth()).to.equal(200);
  });
});

interface HealthSession {
  socket: TLSSocket;
  fingerprint: string;
  /** Sends `GET /health` on this connection (keep-alive) and resolves with the status code. */
  health(): Promise<number>;
  /** Closes the connection and returns the certificate it was served. */
  close(): string;
  closeAfterHealth(): Promise<number>;
}

/** One keep-alive TLS connection to control, verified against the CA, with the certificate it got. */
function openHealthSession(port: number, caFile: string): Promise<HealthSession> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca: readFileSync(caFile), servername: 'localhost' });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      const fingerprint = socket.getPeerX509Certificate()?.fingerprint256 ?? '';
      const health = (): Promise<number> =>
        new Promise((ok, fail) => {
          let text = '';
          const onData = (chunk: Buffer): void => {
            text += chunk.toString('latin1');
            const head = text.indexOf('\r\n\r\n');
            if (head < 0) return;
            const length = Number(/content-length: *(\d+)/i.exec(text.slice(0, head))?.[1] ?? 0);
            if (text.length < head + 4 + length) return;
            socket.off('data', onData);
            ok(Number(text.slice(9, 12)));
          };
          socket.on('data', onData);
          socket.once('close', () => fail(new Error('connection closed before the answer')));
          socket.write('GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n');
        });
      const close = (): string => {
        socket.destroy();
        return fingerprint;
      };
      resolve({
        socket,
        fingerprint,
        health,
        close,
        closeAfterHealth: async () => {
          const status = await health();
          socket.destroy();
          return status;
        },
      });
    });
  });
}
