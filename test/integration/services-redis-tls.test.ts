/**
 * Redis engines with certificates (docs/tls.md): a Redis service with TLS required runs every
 * instance TLS only (`port 0`, `tls-port`) with its service's certificate from the platform CA, the
 * replica streams from its primary over TLS (`tls-replication yes`), a plaintext connection to an
 * engine port gets nothing, a TLS client without a certificate the platform CA signed is refused by
 * every engine (the router presents its own), and the router re-encrypts redis-cli --tls traffic
 * to the engine, verified against the platform CA. A rotated certificate (`rotate-certificate`) is loaded by the
 * engines with `CONFIG SET` and by the router while connections already open keep working. Real
 * cells, redis-server, redis-cli and openssl throughout.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { PlatformCa } from '../../common/platform-ca';
import type { ServiceView } from '../../control/services';
import type { EngineUser } from '../../protocol/cell-protocol';
import { adminUser, enginePid, primaryOf } from '../helpers/failover-support';
import { useServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function redisCli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile('redis-cli', args, { timeout: 20_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? 1 : 0, stdout: stdout.trim(), stderr }),
    );
  });
}

/** The SHA-256 fingerprint of the certificate a TLS port (engine or router) presents. */
function presented(port: number): Promise<string> {
  return new Promise((resolve) => {
    execFile('openssl', ['s_client', '-connect', `127.0.0.1:${port}`], { timeout: 20_000 }, (_err, stdout) => {
      const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(stdout)?.[0];
      resolve(pem ? new X509Certificate(pem).fingerprint256 : `none: ${stdout.slice(0, 200)}`);
    }).stdin?.end();
  });
}

function parseInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

describe('Redis engines with TLS', function () {
  this.timeout(400_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-redis-tls-'));
  const caDir = join(dir, 'ca');
  const caFile = join(caDir, 'ca.crt');
  // The routers' client certificate, which control issues from the platform CA: engines require
  // one the CA signed of every client, so the test's own commands on an engine present it too.
  const clientCert = join(caDir, 'issued', 'router-client.crt');
  const clientKey = join(caDir, 'issued', 'router-client.key');
  const cluster = useServiceCluster({
    cells: 2,
    services: { platformCa: { dir: caDir } },
    cellArgs: ['--ca-dir', caDir],
  });
  let view: ServiceView;
  let key: ServiceKeyAuth;
  const admins = new Map<string, EngineUser>();

  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A command on an engine itself, over TLS verified against the platform CA, as the platform's user. */
  function onEngine(port: number, admin: EngineUser, ...cmd: string[]): Promise<Run> {
    return redisCli([
      '--tls',
      '--cacert',
      caFile,
      '--cert',
      clientCert,
      '--key',
      clientKey,
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '--user',
      admin.username,
      '--pass',
      admin.password,
      '--no-auth-warning',
      ...cmd,
    ]);
  }

  async function until<T>(what: string, read: () => Promise<T>, ok: (v: T) => boolean, ms = 60_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = await read();
      if (ok(v)) return v;
      if (Date.now() > deadline) throw new Error(`${what}: last ${JSON.stringify(v)}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  }

  it('runs every instance TLS only, the replica streaming from its primary over TLS', async () => {
    const res = await cluster().api('POST', '/v3/service_instances', {
      name: 'rtls',
      engine: 'redis',
      replicas: 1,
      tls: 'required',
      volume: { size_mb: 64 },
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    view = await cluster().waitForService(
      'rtls',
      240_000,
      (s) => s.status === 'running' && s.instances.every((i) => i.state === 'running'),
    );
    key = await serviceKey(cluster().api, 'rtls');
    await until(
      'the routers client certificate',
      async () => existsSync(clientKey),
      (v) => v,
    );
    for (const inst of view.instances) admins.set(inst.id, await adminUser(cluster(), view, inst.id));
    const primary = primaryOf(view);
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const replicaInfo = await until(
      'replica link up',
      async () => parseInfo((await onEngine(replica.port!, admins.get(replica.id)!, 'INFO', 'replication')).stdout),
      (i) => i.master_link_status === 'up',
    );
    expect(replicaInfo.role).to.equal('slave');
    expect(replicaInfo.master_port).to.equal(String(primary.port));
    const primaryInfo = parseInfo(
      (await onEngine(primary.port!, admins.get(primary.id)!, 'INFO', 'replication')).stdout,
    );
    expect(primaryInfo.role).to.equal('master');
    expect(primaryInfo.connected_slaves).to.equal('1');
    for (const inst of view.instances) {
      const admin = admins.get(inst.id)!;
      // The only port is the TLS port, so the replication link above is TLS; and it is asked for.
      expect((await onEngine(inst.port!, admin, 'CONFIG', 'GET', 'port')).stdout).to.equal('port\n0');
      expect((await onEngine(inst.port!, admin, 'CONFIG', 'GET', 'tls-replication')).stdout).to.equal(
        'tls-replication\nyes',
      );
    }
  });

  it('refuses a TLS client without a certificate from the platform CA on every engine port', async () => {
    const other = await PlatformCa.open(join(dir, 'other-ca'));
    const foreign = await other.ensure('intruder', ['intruder']);
    for (const inst of view.instances) {
      const admin = admins.get(inst.id)!;
      expect((await onEngine(inst.port!, admin, 'CONFIG', 'GET', 'tls-auth-clients')).stdout).to.equal(
        'tls-auth-clients\nyes',
      );
      const auth = ['-h', '127.0.0.1', '-p', String(inst.port), '--user', admin.username, '--pass', admin.password];
      const bare = await redisCli(['--tls', '--cacert', caFile, ...auth, '--no-auth-warning', 'PING']);
      expect(bare.stdout, 'no client certificate').to.not.equal('PONG');
      const intruder = await redisCli([
        '--tls',
        '--cacert',
        caFile,
        '--cert',
        foreign.certFile,
        '--key',
        foreign.keyFile,
        ...auth,
        '--no-auth-warning',
        'PING',
      ]);
      expect(intruder.stdout, 'a certificate another CA signed').to.not.equal('PONG');
      // The router's certificate (the platform CA's) with the same user is served.
      expect((await onEngine(inst.port!, admin, 'PING')).stdout).to.equal('PONG');
    }
  });

  it('gives a plaintext client nothing on an engine port', async () => {
    for (const inst of view.instances) {
      const admin = admins.get(inst.id)!;
      const plain = await redisCli([
        '-h',
        '127.0.0.1',
        '-p',
        String(inst.port),
        '--user',
        admin.username,
        '--pass',
        admin.password,
        '--no-auth-warning',
        'PING',
      ]);
      expect(plain.stdout).to.not.equal('PONG');
      expect(plain.stdout + plain.stderr).to.match(/closed|reset|error/i);
    }
  });

  it('serves redis-cli --tls through the router, re-encrypted to the engine, and the write reaches the replica', async () => {
    const status = await cluster().api<{ applied: boolean; tls: string; tls_backends: number }>(
      'GET',
      '/v3/service_instances/rtls/route',
    );
    expect(status.status).to.equal(200);
    expect(status.body.tls).to.equal('required');
    // Both instances are reached over TLS: their cells report it and the route says so.
    await until(
      'both backends over TLS',
      async () =>
        (await cluster().api<{ applied: boolean; tls_backends: number }>('GET', '/v3/service_instances/rtls/route'))
          .body,
      (b) => b.applied && b.tls_backends === 2,
    );
    const uri = `rediss://${encodeURIComponent(key.username)}:${encodeURIComponent(key.password)}@127.0.0.1:${view.port}`;
    const set = await redisCli(['--tls', '--cacert', caFile, '-u', uri, 'SET', 'through', 'tls']);
    expect(set.stdout, set.stderr).to.equal('OK');
    const get = await redisCli(['--tls', '--cacert', caFile, '-u', uri, 'GET', 'through']);
    expect(get.stdout).to.equal('tls');
    const replica = view.instances.find((i) => i.role === 'replica')!;
    await until(
      'write on the replica',
      async () => (await onEngine(replica.port!, admins.get(replica.id)!, 'GET', 'through')).stdout,
      (v) => v === 'tls',
    );
    // A plaintext client is refused by the router (required policy).
    const plain = await redisCli(['-u', uri.replace('rediss://', 'redis://'), 'PING']);
    expect(plain.stdout).to.not.equal('PONG');
  });

  it('rotates the service certificate: engines load it by CONFIG SET, open TLS connections keep working', async () => {
    const certFile = join(caDir, 'issued', 'service-rtls.crt');
    const before = new X509Certificate(readFileSync(certFile)).fingerprint256;
    // The engines present the service's certificate (the route's), not their cell's.
    for (const inst of view.instances) expect(await presented(inst.port!)).to.equal(before);
    const primary = primaryOf(view);
    const ca = readFileSync(caFile);
    // Connections opened before the rotation: through the router as the key's user, and to the
    // primary engine itself as the platform's. No reconnects: each must stay the same connection.
    const open = (port: number, auth: { username: string; password: string }): Redis =>
      new Redis({
        host: '127.0.0.1',
        port,
        username: auth.username,
        password: auth.password,
        tls: { ca, cert: readFileSync(clientCert), key: readFileSync(clientKey) },
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
        enableOfflineQueue: false,
      });
    const viaRouter = open(view.port, key);
    const direct = open(primary.port!, admins.get(primary.id)!);
    try {
      await viaRouter.connect();
      await direct.connect();
      const routerId = await viaRouter.client('ID');
      const directId = await direct.client('ID');
      expect(await viaRouter.set('before', 'rotation')).to.equal('OK');

      const t0 = Date.now();
      const rotated = await cluster().api<{ fingerprint_sha256: string; engines: number }>(
        'POST',
        '/v3/service_instances/rtls/actions/rotate-certificate',
      );
      expect(rotated.status, JSON.stringify(rotated.body)).to.equal(200);
      const after = new X509Certificate(readFileSync(certFile)).fingerprint256;
      expect(after).to.not.equal(before);
      expect(rotated.body.fingerprint_sha256).to.equal(after);
      expect(rotated.body.engines).to.equal(2);

      // Each engine loads it on its cell's next probe (CONFIG SET tls-cert-file ...), the router
      // on its next handshake.
      for (const inst of view.instances)
        await until(
          `engine ${inst.id} presents the rotated certificate`,
          () => presented(inst.port!),
          (f) => f === after,
        );
      await until(
        'the router presents the rotated certificate',
        () => presented(view.port),
        (f) => f === after,
      );
      console.log(
        `      rotation: every engine and the router present the new certificate ${Date.now() - t0} ms after the call`,
      );
      for (const inst of view.instances) {
        const files = await onEngine(inst.port!, admins.get(inst.id)!, 'CONFIG', 'GET', 'tls-cert-file');
        expect(files.stdout).to.match(/tls\/server\.crt$/);
      }

      // The connections opened before answer, on the same connection.
      expect(await viaRouter.get('before')).to.equal('rotation');
      expect(await viaRouter.client('ID')).to.equal(routerId);
      expect(await direct.ping()).to.equal('PONG');
      expect(await direct.client('ID')).to.equal(directId);
      // A new redis-cli --tls --cacert through the router, verified against the platform CA.
      const uri = `rediss://${encodeURIComponent(key.username)}:${encodeURIComponent(key.password)}@127.0.0.1:${view.port}`;
      const fresh = await redisCli(['--tls', '--cacert', caFile, '-u', uri, 'GET', 'before']);
      expect(fresh.stdout, fresh.stderr).to.equal('rotation');
      // The replica still streams from its primary over TLS (a new link would use the new pair).
      const replica = view.instances.find((i) => i.role === 'replica')!;
      await until(
        'the write on the replica after the rotation',
        async () => (await onEngine(replica.port!, admins.get(replica.id)!, 'GET', 'before')).stdout,
        (v) => v === 'rotation',
      );
    } finally {
      viaRouter.disconnect();
      direct.disconnect();
    }
  });

  it('fails over with TLS on: the replica is promoted, the old primary rejoins over TLS, the router re-encrypts to the new primary', async () => {
    const old = primaryOf(view);
    const uri = `rediss://${encodeURIComponent(key.username)}:${encodeURIComponent(key.password)}@127.0.0.1:${view.port}`;
    process.kill(await enginePid(cluster(), view, old.id), 'SIGKILL');
    const after = await cluster().waitForService(
      'rtls',
      240_000,
      (s) => s.epoch > view.epoch && s.status === 'running' && s.instances.every((i) => i.state === 'running'),
    );
    const promoted = primaryOf(after);
    expect(promoted.id).to.not.equal(old.id);
    // The write goes to the promoted engine over TLS (the router has no other way to reach it).
    await until(
      'a write through the router after the failover',
      async () => (await redisCli(['--tls', '--cacert', caFile, '-u', uri, 'SET', 'after', 'failover'])).stdout,
      (v) => v === 'OK',
    );
    // The old primary is a replica of the promoted one now, streaming over TLS.
    const rejoined = after.instances.find((i) => i.id === old.id)!;
    const info = await until(
      'old primary streaming again',
      async () => parseInfo((await onEngine(rejoined.port!, admins.get(old.id)!, 'INFO', 'replication')).stdout),
      (i) => i.role === 'slave' && i.master_link_status === 'up',
    );
    expect(info.master_port).to.equal(String(promoted.port));
    await until(
      'the write on the rejoined replica',
      async () => (await onEngine(rejoined.port!, admins.get(old.id)!, 'GET', 'after')).stdout,
      (v) => v === 'failover',
    );
  });
});
