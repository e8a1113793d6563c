/**
 * TLS from the router to engines (docs/tls.md, Router to engine): a backend marked `tls` is
 * reached over TLS and verified against the route's backendCaFile (the platform CA); PostgreSQL
 * backends get an SSLRequest first. A backend whose certificate comes from another CA, or that
 * declines TLS, is refused and counted, never used in plaintext. With a backend certificate the
 * router presents it to an engine that asks clients for one (mTLS). With the native relay these
 * routes are served by its threads (OpenSSL in the addon), which /health names per port. Real
 * redis-server, redis-cli, postgres and psql; Node TLS servers where a test must see raw bytes.
 */
import { expect } from 'chai';
import { pino } from 'pino';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as netServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as tlsServer, type TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PlatformCa, type IssuedCertificate } from '../../common';
import { createRouterMetrics, type RouteTableInput } from '../../router';
import { freePort } from '../helpers/free-port';
import { startPostgresServer, type PostgresServerHandle } from '../helpers/postgres-server';
import { startRedisServer, waitForPort, type RedisServerHandle } from '../helpers/redis-server';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { eventually } from '../helpers/tcp-client';

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

/** A TCP server that keeps what it receives per connection; `onSocket` decides what it does next. */
interface RecordingServer {
  port: number;
  /** Bytes received, per accepted connection. */
  received: Buffer[][];
  sockets: Socket[];
  stop(): Promise<void>;
}

async function recordingServer(onSocket: (socket: Socket) => void): Promise<RecordingServer> {
  const handle: RecordingServer = { port: 0, received: [], sockets: [], stop: async () => undefined };
  // Half-open: a proxy in front of a backend must carry each direction's end on its own.
  const server: Server = netServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    handle.received.push(chunks);
    handle.sockets.push(socket);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('error', () => undefined);
    onSocket(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  handle.port = (server.address() as { port: number }).port;
  handle.stop = () =>
    new Promise<void>((resolve) => {
      for (const s of handle.sockets) s.destroy();
      server.close(() => resolve());
    });
  return handle;
}

/**
 * A Node TLS echo server with `cert` (it echoes and ends its side when the client ends), behind a
 * recording TCP proxy so a test sees the raw bytes the router sent. `reused` lists, per connection,
 * whether the router resumed a session.
 */
async function tlsEchoBehindRecorder(
  cert: IssuedCertificate,
): Promise<RecordingServer & { reused: boolean[]; appBytes: number }> {
  const reused: boolean[] = [];
  const stats = { appBytes: 0 };
  const tls = tlsServer({ cert: readFileSync(cert.certFile), key: readFileSync(cert.keyFile), allowHalfOpen: true });
  tls.on('secureConnection', (s: TLSSocket) => {
    reused.push(s.isSessionReused());
    s.on('data', (d: Buffer) => (stats.appBytes += d.length));
    s.on('error', () => undefined);
    s.pipe(s);
  });
  tls.on('tlsClientError', () => undefined);
  // Every connection is destroyed on stop: a half-open one would keep close() waiting.
  const open = new Set<Socket>();
  tls.on('connection', (c: Socket) => {
    open.add(c);
    c.on('close', () => open.delete(c));
  });
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  const tlsPort = (tls.address() as { port: number }).port;
  const recorder = await recordingServer((socket) => {
    socket.pause();
    const upstream = netConnect({ port: tlsPort, host: '127.0.0.1', allowHalfOpen: true }, () => {
      socket.pipe(upstream);
      upstream.pipe(socket);
      socket.resume();
    });
    upstream.on('error', () => socket.destroy());
    socket.on('close', () => upstream.destroy());
  });
  const stopRecorder = recorder.stop;
  return Object.assign(recorder, {
    reused,
    get appBytes() {
      return stats.appBytes;
    },
    stop: async () => {
      await stopRecorder();
      for (const c of open) c.destroy();
      await new Promise<void>((resolve) => tls.close(() => resolve()));
    },
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
  let echo: Awaited<ReturnType<typeof tlsEchoBehindRecorder>>;
  let wrongName: Awaited<ReturnType<typeof tlsEchoBehindRecorder>>;
  // Takes TCP connections and never answers the router's ClientHello: a backend mid-handshake.
  let stall: RecordingServer;
  // Answers an SSLRequest with 'S' and bytes after it in the same write, as an attacker in the
  // path would to have them taken as the start of the TLS session (CVE-2021-23222).
  let injector: RecordingServer;
  // Takes TCP connections and never answers: its backend handshake times out.
  let silent: RecordingServer;
  let router: RouterHarness;
  const routerLog: string[] = [];
  let routes: RouteTableInput['routes'];
  const port: Record<string, number> = {};
  const portNames = [
    'redis',
    'redisForeign',
    'redisMtls',
    'redisMtlsNoCert',
    'pg',
    'pgForeign',
    'pgPlain',
    'pgBound',
    'echo',
    'wrongName',
    'stall',
    'plainClient',
    'retry',
    'rotatingCa',
    'pgInject',
    'handshakeTimeout',
    'ipName',
  ];
  // The route's backend CA file, rewritten by a test: first another CA's, then the platform CA's.
  let rotatingCaFile: string;
  let otherCaFile: string;

  const stats = (p: number) => router.router.routeStats().find((s) => s.port === p)!;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sf-backend-tls-'));
    ca = await PlatformCa.open(join(dir, 'ca'));
    // Another CA: its certificates carry the right names but do not chain to the platform CA.
    const other = await PlatformCa.open(join(dir, 'other-ca'));
    otherCaFile = other.certFile;
    rotatingCaFile = join(dir, 'rotating-ca.pem');
    writeFileSync(rotatingCaFile, readFileSync(other.certFile));
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
    echo = await tlsEchoBehindRecorder(engineCert);
    // Chains to the platform CA but names neither the address connected to nor anything routed.
    wrongName = await tlsEchoBehindRecorder(await ca.ensure('cell-wrong', ['wrong.example']));
    stall = await recordingServer(() => undefined);
    silent = await recordingServer(() => undefined);
    injector = await recordingServer((socket) => socket.once('data', () => socket.write('SX')));
    for (const name of portNames) port[name] = await freePort();
    const terminate = (extra: object = {}): Record<string, unknown> => ({
      certFile: routerCert.certFile,
      keyFile: routerCert.keyFile,
      backendCaFile: ca.certFile,
      ...extra,
    });
    const tlsBackend = (p: number) => [{ host: '127.0.0.1', port: p, tls: true }];
    routes = [
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
      { port: port.echo!, backends: tlsBackend(echo.port), tls: terminate() },
      { port: port.wrongName!, backends: tlsBackend(wrongName.port), tls: terminate() },
      {
        port: port.stall!,
        // Longer than the test: the connection stays mid-handshake until the fence.
        connectTimeoutMs: 120_000,
        backends: [{ id: 'stall', host: '127.0.0.1', port: stall.port, tls: true }],
        tls: terminate(),
      },
      // Plaintext clients, TLS to the backend verified against the system's CAs (no CA given).
      { port: port.plainClient!, backends: tlsBackend(redisGood.tlsPort), tls: true },
      {
        port: port.retry!,
        mode: 'round-robin',
        backends: [
          { id: 'foreign', host: '127.0.0.1', port: redisForeign.tlsPort, tls: true },
          { id: 'good', host: '127.0.0.1', port: redisGood.tlsPort, tls: true },
        ],
        tls: terminate(),
      },
      // A backendServerName that is an address is checked against the certificate's IP names.
      {
        port: port.ipName!,
        backends: tlsBackend(redisGood.tlsPort),
        tls: terminate({ backendServerName: '127.0.0.1' }),
      },
      {
        port: port.pgInject!,
        backends: tlsBackend(injector.port),
        tls: terminate({ startup: 'postgres' }),
      },
      {
        port: port.handshakeTimeout!,
        mode: 'round-robin',
        // Short, so the silent backend's handshake gives up quickly; the test asserts no duration.
        connectTimeoutMs: 500,
        backends: [
          { id: 'silent', host: '127.0.0.1', port: silent.port, tls: true },
          { id: 'good', host: '127.0.0.1', port: redisGood.tlsPort, tls: true },
        ],
        tls: terminate(),
      },
      {
        port: port.rotatingCa!,
        backends: tlsBackend(redisGood.tlsPort),
        tls: terminate({ backendCaFile: rotatingCaFile }),
      },
    ];
    // Warnings kept to check what an operator reads when a backend's TLS fails.
    router = await startRouter(
      { routes },
      { logger: pino({ level: 'warn' }, { write: (line: string) => void routerLog.push(line) }) },
    );
  });

  after(async () => {
    await router?.stop();
    for (const s of [redisGood, redisForeign, redisMtls]) await s?.stop();
    for (const s of [pgGood, pgForeign, pgPlain, pgBound]) await s?.stop();
    for (const s of [echo, wrongName, stall, injector, silent]) await s?.stop();
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

  /** The path that serves these routes: the relay threads when the native relay accepts, else Node. */
  const expectedPath = (): 'native' | 'js' =>
    router.router.status().relay === 'native' &&
    process.env.SF_NATIVE_ACCEPT !== 'off' &&
    process.env.SF_NATIVE_TLS !== 'off'
      ? 'native'
      : 'js';
  const connectTls = (p: number): Promise<TLSSocket> =>
    new Promise((resolve, reject) => {
      const s = tlsConnect({ port: p, host: '127.0.0.1', servername: 'localhost', ca: readFileSync(ca.certFile) }, () =>
        resolve(s),
      );
      s.once('error', reject);
    });

  it('names in /health the path that serves each route with TLS to its backends', () => {
    const status = router.router.status();
    const path = expectedPath();
    const jsPorts = status.accept.jsPorts.map((p) => p.port);
    for (const name of portNames) {
      // A silent fall-back to Node's TLS would show as relay 'js' and as a JS port.
      const entry = status.tlsPorts.find((p) => p.port === port[name]);
      expect(entry, name).to.include({ relay: path, backendTls: true });
      expect(entry!.tls, name).to.equal(name === 'plainClient' ? 'backend' : 'terminate');
      if (path === 'native') expect(jsPorts, name).to.not.include(port[name]!);
      else expect(jsPorts, name).to.include(port[name]!);
    }
  });

  it('carries 16 MB each way byte-exact through both encryptions, ends with close_notify both ways, and resumes the backend session', async () => {
    const s = await connectTls(port.echo!);
    const data = randomBytes(16 * 1024 * 1024);
    const sent = createHash('sha256').update(data).digest('hex');
    const got = createHash('sha256');
    let received = 0;
    const ended = new Promise<void>((resolve, reject) => {
      s.on('data', (d: Buffer) => {
        got.update(d);
        received += d.length;
        // Reading in bursts lets the router's writes to the client block now and then.
        s.pause();
        setTimeout(() => s.resume(), 1);
      });
      // The echo server ends its side once it saw the client's end: a half-close carried to the
      // backend (close_notify, FIN) and back.
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    for (let off = 0; off < data.length; off += 1 << 20) s.write(data.subarray(off, off + (1 << 20)));
    s.end();
    await ended;
    expect(received).to.equal(data.length);
    expect(got.digest('hex')).to.equal(sent);
    s.destroy();
    // A second connection to the same backend: the relay threads keep one session per backend.
    const again = await connectTls(port.echo!);
    const answer = await new Promise<string>((resolve, reject) => {
      again.once('data', (d: Buffer) => resolve(d.toString()));
      again.once('error', reject);
      again.write('again');
    });
    again.destroy();
    expect(answer).to.equal('again');
    expect(echo.reused.length).to.equal(2);
    if (expectedPath() === 'native') expect(echo.reused[1]).to.equal(true);
  });

  it('refuses a backend whose certificate names another host: closed, counted, nothing sent in plaintext', async () => {
    const before = router.router.routeStats().find((s) => s.port === port.wrongName!)!.backendTlsErrors;
    const r = await redisCli(port.wrongName!, 'ECHO', 'plaintext-marker');
    expect(r.stdout).to.not.include('plaintext-marker');
    expect(stats(port.wrongName!).backendTlsErrors).to.be.greaterThan(before);
    // The backend got a handshake and no application byte; the marker never crossed the wire.
    expect(wrongName.received.length).to.be.greaterThan(0);
    const raw = Buffer.concat(wrongName.received.flat());
    expect(raw[0]).to.equal(0x16);
    expect(raw.includes('plaintext-marker')).to.equal(false);
    expect(wrongName.appBytes).to.equal(0);
    // /health says why, on either path (Node: "does not match", OpenSSL: "IP address mismatch").
    const entry = router.router.status().tlsPorts.find((p) => p.port === port.wrongName!);
    expect(entry?.lastBackendTlsError).to.match(/match/i);
    // And so does the log, once per interval and port, with the reason.
    const logged = (): { msg?: string } | undefined =>
      routerLog
        .map((l) => JSON.parse(l) as { port?: number; msg?: string })
        .find((l) => l.port === port.wrongName && /TLS to a backend failed/.test(l.msg ?? ''));
    await eventually(async () => logged() !== undefined, 5_000, 'a log line for the failed backend TLS');
    expect(logged()?.msg).to.match(/match/i);
  });

  it('verifies backends against the system CAs when the route gives no CA (plaintext clients)', async () => {
    const before = stats(port.plainClient!).backendTlsErrors;
    const r = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port.plainClient!), 'PING']);
    expect(r.stdout).to.not.equal('PONG');
    expect(stats(port.plainClient!).backendTlsErrors).to.be.greaterThan(before);
  });

  it('destroys a connection whose fenced backend is still in its handshake before the fence returns', async () => {
    const client = await connectTls(port.stall!);
    client.on('error', () => undefined);
    const clientClosed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    // The client's bytes wait in the router until the backend's handshake ends, which it never does.
    client.write('fenced-marker');
    await eventually(() => (stall.received[0]?.length ?? 0) > 0, 20_000, 'the router reached the stalled backend');
    const backendClosed = new Promise<void>((resolve) => {
      const s = stall.sockets[0]!;
      if (s.destroyed) resolve();
      else s.once('close', () => resolve());
    });
    const killedBefore = stats(port.stall!).killedFenced;
    const fenced = routes.map((r) =>
      r.port === port.stall!
        ? {
            ...r,
            backends: [{ id: 'stall', host: '127.0.0.1', port: stall.port, tls: true, state: 'fenced' as const }],
          }
        : r,
    );
    await router.reload({ routes: fenced });
    // Natively the connection is reset before the table change returns (counted as fenced).
    if (expectedPath() === 'native') expect(stats(port.stall!).killedFenced).to.equal(killedBefore + 1);
    await backendClosed;
    await clientClosed;
    expect(stall.received.length).to.equal(1);
    const raw = Buffer.concat(stall.received[0]!);
    expect(raw[0]).to.equal(0x16);
    expect(raw.includes('fenced-marker')).to.equal(false);
    await router.reload({ routes });
  });

  it('tries the next backend when one fails verification, as the JS path does', async () => {
    const before = stats(port.retry!).backendTlsErrors;
    // Round-robin puts the foreign backend first for one of two clients: that client is served by
    // the other backend after a counted failure.
    for (let i = 0; i < 2; i++) {
      const r = await redisCli(port.retry!, 'PING');
      expect(r.stdout, r.stderr).to.equal('PONG');
    }
    expect(stats(port.retry!).backendTlsErrors).to.be.greaterThan(before);
  });

  it('refuses a PostgreSQL backend that sends bytes after its S, and sends it nothing more', async () => {
    const before = stats(port.pgInject!).backendTlsErrors;
    const r = await psql(port.pgInject!, 'select 1');
    expect(r.code).to.not.equal(0);
    expect(stats(port.pgInject!).backendTlsErrors).to.be.greaterThan(before);
    // The SSLRequest and nothing else: no ClientHello on top of the injected bytes, no plaintext.
    expect(injector.received.length).to.be.greaterThan(0);
    for (const chunks of injector.received) expect(Buffer.concat(chunks).toString('hex')).to.equal('0000000804d2162f');
    const entry = router.router.status().tlsPorts.find((p) => p.port === port.pgInject!);
    expect(entry?.lastBackendTlsError).to.match(/declined TLS/);
  });

  it('counts a backend whose handshake does not end within the connect timeout, and serves the client from the next', async () => {
    const before = stats(port.handshakeTimeout!).connectTimeouts;
    for (let i = 0; i < 2; i++) {
      const r = await redisCli(port.handshakeTimeout!, 'PING');
      expect(r.stdout, r.stderr).to.equal('PONG');
    }
    expect(stats(port.handshakeTimeout!).connectTimeouts).to.be.greaterThan(before);
    // It got a ClientHello, never a client byte.
    expect(silent.received.length).to.be.greaterThan(0);
    expect(Buffer.concat(silent.received.flat())[0]).to.equal(0x16);
  });

  it('takes a changed backend CA file for new connections', async () => {
    const refused = await redisCli(port.rotatingCa!, 'PING');
    expect(refused.stdout).to.not.equal('PONG');
    expect(stats(port.rotatingCa!).backendTlsErrors).to.be.greaterThan(0);
    writeFileSync(rotatingCaFile, readFileSync(ca.certFile));
    // The file is checked at most once a second: a connection within that second may still fail.
    await eventually(
      async () => (await redisCli(port.rotatingCa!, 'PING')).stdout === 'PONG',
      20_000,
      'the new CA in force',
    );
    writeFileSync(rotatingCaFile, readFileSync(otherCaFile));
  });

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
    const byAddress = await redisCli(port.ipName!, 'GET', 'k');
    expect(byAddress.stdout, byAddress.stderr).to.equal('v');
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
