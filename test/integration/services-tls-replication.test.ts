/**
 * Engines with certificates (docs/tls.md): cells started with the platform CA give PostgreSQL
 * instances `ssl = on` with the service's certificate (the one its route terminates with),
 * replicas stream from their primary with `sslmode=verify-full` against the service's name, and a
 * replication connection without TLS is refused. The router re-encrypts to the engines, and a
 * client's SCRAM channel binding holds through it (`channel_binding=require`), with the route's
 * policy honoured. A renewed certificate, and one rotated on demand (`sf rotate-certificate`),
 * reaches router and engines without a restart, an open session keeping its own. A failover (primary SIGKILLed) still works: the replica is promoted,
 * the old primary is rewound over TLS and streams again over TLS. Real PostgreSQL, psql, openssl
 * and cells throughout.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { PlatformCa } from '../../common/platform-ca';
import type { ServiceView } from '../../control/services';
import { type InstanceSpec } from '../../protocol/cell-protocol';
import { keyLayout } from '../../protocol/keys';
import { adminUser, enginePid, primaryOf, promotedFrom } from '../helpers/failover-support';
import { ADMIN_TOKEN } from '../helpers/control-harness';
import { useServiceCluster } from '../helpers/service-cluster';
import { runSfToExit } from '../helpers/sf-process';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';

const PSQL = '/usr/lib/postgresql/15/bin/psql';
const KEYS = keyLayout();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function psql(conninfo: string, sql: string, password: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      PSQL,
      [conninfo, '-XAtq', '-c', sql],
      { timeout: 20_000, env: { PATH: process.env.PATH ?? '', PGPASSWORD: password, PGCONNECT_TIMEOUT: '5' } },
      (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout: stdout.trim(), stderr }),
    );
  });
}

/** The SHA-256 fingerprint of the certificate a PostgreSQL port (engine or router) presents. */
function presented(port: number): Promise<string> {
  return new Promise((resolve) => {
    execFile(
      'openssl',
      ['s_client', '-starttls', 'postgres', '-connect', `127.0.0.1:${port}`],
      { timeout: 20_000 },
      (_err, stdout) => {
        const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(stdout)?.[0];
        resolve(pem ? new X509Certificate(pem).fingerprint256 : `none: ${stdout.slice(0, 200)}`);
      },
    ).stdin?.end();
  });
}

/**
 * A plaintext StartupMessage to a PostgreSQL port from `localAddress`; resolves with the
 * server's error message, or the type of its first answer when that is not an error ('R': it
 * asked for a password).
 */
function plaintextStartup(localAddress: string, port: number, user: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const params = Buffer.from(`user\0${user}\0database\0postgres\0\0`);
    const msg = Buffer.alloc(8 + params.length);
    msg.writeInt32BE(msg.length, 0);
    msg.writeInt32BE(196608, 4); // protocol 3.0
    params.copy(msg, 8);
    const sock = connect({ host: '127.0.0.1', port, localAddress }, () => sock.write(msg));
    let got = Buffer.alloc(0);
    sock.setTimeout(10_000, () => sock.destroy(new Error('no answer to the StartupMessage')));
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length < 5 || got.length < 1 + got.readInt32BE(1)) return;
      sock.destroy();
      if (got[0] !== 0x45) return resolve(`answer ${String.fromCharCode(got[0])}`);
      // ErrorResponse: fields of a type byte and a NUL-terminated string; M is the message.
      const fields = got
        .subarray(5, 1 + got.readInt32BE(1))
        .toString()
        .split('\0');
      resolve(fields.find((f) => f.startsWith('M'))?.slice(1) ?? fields.join(' '));
    });
    sock.on('error', reject);
  });
}

/** Polls `read` until it returns `want` (the machine may be loaded: generous bounds). */
async function until(what: string, read: () => Promise<string>, want: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = await read();
  while (last !== want) {
    if (Date.now() > deadline) throw new Error(`${what}: ${last}, not ${want}`);
    await new Promise((r) => setTimeout(r, 500));
    last = await read();
  }
}

describe('PostgreSQL replication over TLS', function () {
  this.timeout(400_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-tls-repl-'));
  const caDir = join(dir, 'ca');
  const caFile = join(caDir, 'ca.crt');
  // Control (in-process, started first) creates the CA in caDir; the cells then take it.
  const cluster = useServiceCluster({
    // The third holds no instance of pgr until a replica is moved to it by catch-up.
    cells: 3,
    // Slower leader and lease timings than the other suites': on a loaded machine (load 30-40)
    // the fast ones made leadership change hands and the primary miss its lease while the
    // replica's base backup ran, so the service was failed over before it ever ran. What this
    // file tests is TLS, not how fast a missed renewal is noticed.
    services: {
      platformCa: { dir: caDir },
      leaderTtlMs: 6_000,
      leaderRenewMs: 1_000,
      reconciler: { primaryLeaseTtlMs: 10_000 },
    },
    // 127.0.0.0/8 besides the loopback address itself: a client bound to 127.0.0.3 stands for
    // one on another host of a trusted network.
    cellArgs: ['--ca-dir', caDir, '--trust-cidr', '127.0.0.0/8'],
  });
  // The routers' client certificate, which control issues from the platform CA.
  const clientCert = join(caDir, 'issued', 'router-client.crt');
  const clientKey = join(caDir, 'issued', 'router-client.key');
  const withCert = `sslcert=${clientCert} sslkey=${clientKey}`;
  let key: ServiceKeyAuth;
  let view: ServiceView;

  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Whether the primary's walsender serves its standby over TLS, asked as the platform's user. */
  async function replicationSsl(v: ServiceView): Promise<string> {
    const primary = primaryOf(v);
    const admin = await adminUser(cluster(), v, primary.id);
    const r = await psql(
      `host=127.0.0.1 port=${primary.port} user=${admin.username} dbname=postgres sslmode=disable`,
      'select s.ssl, s.version from pg_stat_replication r join pg_stat_ssl s using (pid)',
      admin.password,
    );
    return r.code === 0 ? r.stdout : `ERROR ${r.stderr}`;
  }

  /** psql through the service's route, verify-full and SCRAM channel binding required. */
  async function throughRouter(v: ServiceView, sql: string, auth: ServiceKeyAuth = key): Promise<Run> {
    return psql(
      `host=127.0.0.1 port=${v.port} user=${auth.username} dbname=postgres sslmode=verify-full sslrootcert=${caFile} channel_binding=require`,
      sql,
      auth.password,
    );
  }

  /**
   * A psql session through the router, verify-full with channel binding, kept open: `ask` sends a
   * statement and waits for the line it must print.
   */
  function openSession(): { session: ChildProcess; ask: (sql: string, want: string) => Promise<void> } {
    const session = spawn(
      PSQL,
      [
        `host=127.0.0.1 port=${view.port} user=${key.username} dbname=postgres sslmode=verify-full sslrootcert=${caFile} channel_binding=require`,
        '-XAtq',
      ],
      { env: { PATH: process.env.PATH ?? '', PGPASSWORD: key.password }, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let out = '';
    session.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const ask = async (sql: string, want: string): Promise<void> => {
      session.stdin!.write(`${sql};\n`);
      const deadline = Date.now() + 30_000;
      while (!out.split('\n').includes(want)) {
        if (Date.now() > deadline) throw new Error(`open session did not answer ${sql}: ${out}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    return { session, ask };
  }

  /**
   * What the engine sees of this very connection: TLS between router and engine. Asked as the
   * platform's admin user: a service key's user found no pg_stat_ssl row for its own backend.
   */
  const ENGINE_SIDE_SSL =
    "select coalesce((select ssl::text from pg_stat_ssl where pid = pg_backend_pid()), 'no pg_stat_ssl row for ' || pg_backend_pid())";

  it('streams to the replica over TLS verified against the platform CA', async () => {
    const res = await cluster().api('POST', '/v3/service_instances', {
      name: 'pgr',
      engine: 'postgres',
      replicas: 1,
      volume: { size_mb: 64 },
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    view = await cluster().waitForService(
      'pgr',
      240_000,
      (s) => s.status === 'running' && s.instances.every((i) => i.state === 'running'),
    );
    key = await serviceKey(cluster().api, 'pgr');
    let last: string;
    const deadline = Date.now() + 30_000;
    while (!/^t\|TLSv1\.[23]$/.test((last = await replicationSsl(view)))) {
      if (Date.now() > deadline) throw new Error(`replication not over TLS: ${last}`);
      await new Promise((r) => setTimeout(r, 300));
    }
    const write = await throughRouter(view, 'create table t (v int); insert into t values (1)');
    expect(write.code, write.stderr).to.equal(0);
  });

  it('re-encrypts to the engines with the route certificate, channel binding holding end to end', async () => {
    const status = await cluster().api<{ tls_backends: number; applied: boolean }>(
      'GET',
      '/v3/service_instances/pgr/route',
    );
    expect(status.body.tls_backends, JSON.stringify(status.body)).to.equal(2);
    // channel_binding=require: SCRAM-SHA-256-PLUS, bound to the certificate psql saw at the router.
    const r = await throughRouter(view, ENGINE_SIDE_SSL, await adminUser(cluster(), view, primaryOf(view).id));
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal('true');
    const serviceCert = new X509Certificate(readFileSync(join(caDir, 'issued', 'service-pgr.crt'))).fingerprint256;
    expect(await presented(view.port)).to.equal(serviceCert);
    expect(await presented(Number(primaryOf(view).port))).to.equal(serviceCert);
  });

  it('honours the policy: required refuses plaintext, optional serves it too', async () => {
    const plain = await psql(
      `host=127.0.0.1 port=${view.port} user=${key.username} dbname=postgres sslmode=disable`,
      'select 1',
      key.password,
    );
    expect(plain.code).to.equal(1);
    expect(plain.stderr).to.match(/this route requires TLS/);
    const res = await cluster().api('POST', '/v3/service_instances', {
      name: 'pgo',
      engine: 'postgres',
      replicas: 0,
      tls: 'optional',
      volume: { size_mb: 64 },
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    const optional = await cluster().waitForService(
      'pgo',
      240_000,
      (s) => s.status === 'running' && s.instances.every((i) => i.state === 'running'),
    );
    const okey = await serviceKey(cluster().api, 'pgo');
    // The route takes its TLS backend once the cell reported it; until then it may be plaintext.
    await until(
      'pgo route TLS backends',
      async () =>
        String(
          (await cluster().api<{ tls_backends: number }>('GET', '/v3/service_instances/pgo/route')).body.tls_backends,
        ),
      '1',
    );
    const oadmin = await adminUser(cluster(), optional, primaryOf(optional).id);
    const clear = await psql(
      `host=127.0.0.1 port=${optional.port} user=${oadmin.username} dbname=postgres sslmode=disable`,
      ENGINE_SIDE_SSL,
      oadmin.password,
    );
    expect(clear.code, clear.stderr).to.equal(0);
    // A plaintext client on an optional route reaches the engine in plaintext (docs/tls.md).
    expect(clear.stdout).to.equal('false');
    const tls = await throughRouter(optional, ENGINE_SIDE_SSL, oadmin);
    const keyed = await throughRouter(optional, 'select 1', okey);
    expect(keyed.stdout, keyed.stderr).to.equal('1');
    expect(tls.code, tls.stderr).to.equal(0);
    expect(tls.stdout).to.equal('true');
  });

  it('changes the policy of a running PostgreSQL service without losing data', async () => {
    const okey = await serviceKey(cluster().api, 'pgo', 'policy');
    const optional = await cluster().waitForService('pgo');
    const plainConn = `host=127.0.0.1 port=${optional.port} user=${okey.username} dbname=postgres sslmode=disable`;
    const seed = await throughRouter(optional, 'create table p (v int); insert into p values (1)', okey);
    expect(seed.code, seed.stderr).to.equal(0);
    const routeOf = async (): Promise<string> => {
      const r = await cluster().api<{ tls: string; tls_backends: number; applied: boolean }>(
        'GET',
        '/v3/service_instances/pgo/route',
      );
      return `${r.body.tls}/${r.body.tls_backends}/${r.body.applied}`;
    };
    const patch = async (tls: string): Promise<void> => {
      const res = await cluster().api<ServiceView>('PATCH', '/v3/service_instances/pgo', { tls });
      expect(res.status, JSON.stringify(res.body)).to.equal(200);
      expect(res.body.tls).to.equal(tls);
    };

    // Plaintext SQL from another address of a trusted network (the plaintext leg of an optional
    // route's plaintext client when the router is on another host): asked for a password under
    // `optional`, refused under `required`, on every engine.
    const plaintextFromTrusted = async (): Promise<string> => {
      const answers = await Promise.all(
        optional.instances.map((i) => plaintextStartup('127.0.0.3', i.port!, okey.username)),
      );
      return answers.map((a) => (/no pg_hba\.conf entry .*no encryption/.test(a) ? 'refused' : a)).join(',');
    };
    expect(await plaintextFromTrusted()).to.equal(optional.instances.map(() => 'answer R').join(','));

    await patch('required');
    await until('route after required', routeOf, 'required/1/true');
    await until(
      'plaintext SQL from a trusted network under required',
      plaintextFromTrusted,
      optional.instances.map(() => 'refused').join(','),
    );
    const refused = await psql(plainConn, 'select 1', okey.password);
    expect(refused.stderr).to.match(/this route requires TLS/);
    const count1 = await throughRouter(optional, 'insert into p values (2); select count(*) from p', okey);
    expect(count1.stdout, count1.stderr).to.equal('2');

    // Off: the route stops terminating, and the engine goes back to the cell's certificate.
    await patch('off');
    await until('route after off', routeOf, 'off/0/true');
    const plain = await psql(plainConn, `insert into p values (3); select count(*) from p`, okey.password);
    expect(plain.stdout, plain.stderr).to.equal('3');

    // Optional again: the engine presents the service's certificate again and is re-encrypted to.
    await patch('optional');
    await until('route after optional', routeOf, 'optional/1/true');
    await until(
      'plaintext SQL from a trusted network under optional again',
      plaintextFromTrusted,
      optional.instances.map(() => 'answer R').join(','),
    );
    const oadmin = await adminUser(cluster(), optional, primaryOf(optional).id);
    const bound = await throughRouter(optional, `${ENGINE_SIDE_SSL}; select count(*) from p`, oadmin);
    expect(bound.stdout, bound.stderr).to.equal('true\n3');
  });

  it('serves a renewed certificate to new connections while an open session keeps running', async () => {
    // A session opened before the renewal, kept open across it.
    const { session, ask } = openSession();
    try {
      await ask('select 41', '41');
      const certFile = join(caDir, 'issued', 'service-pgr.crt');
      const before = new X509Certificate(readFileSync(certFile));
      // Renewal as the CA does it when a certificate's names change: a new certificate and key.
      const names = (before.subjectAltName ?? '').split(', ').map((n) => n.replace(/^(DNS|IP Address):/, ''));
      const ca = await PlatformCa.open(caDir);
      await ca.ensure('service-pgr', [...names, 'renewed.test']);
      const renewed = new X509Certificate(readFileSync(certFile)).fingerprint256;
      expect(renewed).to.not.equal(before.fingerprint256);
      await until('router certificate', () => presented(view.port), renewed);
      for (const inst of view.instances)
        await until(`engine ${inst.id} certificate`, () => presented(Number(inst.port)), renewed);
      // A new connection binds to the new certificate at the router and at the engine alike.
      const fresh = await throughRouter(view, ENGINE_SIDE_SSL, await adminUser(cluster(), view, primaryOf(view).id));
      expect(fresh.code, fresh.stderr).to.equal(0);
      expect(fresh.stdout).to.equal('true');
      await ask('select 42', '42');
    } finally {
      session.stdin?.end();
      session.kill();
    }
  });

  it('rotates a service certificate on demand (sf rotate-certificate): router and engines present it, sessions survive', async () => {
    const { session, ask } = openSession();
    const env = { SF_CONTROL_URL: cluster().controls[0].control.url, SF_API_TOKEN: ADMIN_TOKEN };
    try {
      await ask('select 51', '51');
      const certFile = join(caDir, 'issued', 'service-pgr.crt');
      const keyFile = join(caDir, 'issued', 'service-pgr.key');
      const before = new X509Certificate(readFileSync(certFile));
      const keyBefore = readFileSync(keyFile, 'utf8');
      // Nothing is due (the names and dates are good): only the operator's command renews it.
      const t0 = Date.now();
      const cli = await runSfToExit(['rotate-certificate', 'pgr', '--json'], env);
      expect(cli.code, cli.output).to.equal(0);
      const answer = JSON.parse(cli.output.slice(cli.output.indexOf('{'), cli.output.lastIndexOf('}') + 1)) as {
        service: string;
        fingerprint_sha256: string;
        engines: number;
      };
      const rotated = new X509Certificate(readFileSync(certFile));
      expect(rotated.fingerprint256).to.not.equal(before.fingerprint256);
      expect(answer.fingerprint_sha256).to.equal(rotated.fingerprint256);
      expect(answer.engines).to.equal(2);
      // A new key, not only a new certificate over the old one.
      expect(readFileSync(keyFile, 'utf8')).to.not.equal(keyBefore);
      expect(rotated.publicKey.export({ type: 'spki', format: 'der' })).to.not.deep.equal(
        before.publicKey.export({ type: 'spki', format: 'der' }),
      );

      await until('router certificate after rotation', () => presented(view.port), rotated.fingerprint256);
      for (const inst of view.instances)
        await until(
          `engine ${inst.id} certificate after rotation`,
          () => presented(Number(inst.port)),
          rotated.fingerprint256,
        );
      console.log(
        `      rotation: the router and both engines present the new certificate ${Date.now() - t0} ms after sf rotate-certificate started`,
      );
      // A new login binds to the new certificate at the router and at the engine alike.
      const fresh = await throughRouter(view, ENGINE_SIDE_SSL, await adminUser(cluster(), view, primaryOf(view).id));
      expect(fresh.code, fresh.stderr).to.equal(0);
      expect(fresh.stdout).to.equal('true');
      const keyed = await throughRouter(view, 'select count(*) from t');
      expect(keyed.code, keyed.stderr).to.equal(0);
      // The session opened before the rotation keeps its TLS session and answers.
      await ask('select 52', '52');

      // The event stream records it, with public facts only.
      const events = await cluster().api<{ resources: Array<{ type: string; message: string }> }>(
        'GET',
        '/v3/service_instances/pgr/events',
      );
      const event = events.body.resources.find((e) => e.type === 'certificate-rotated');
      expect(event, JSON.stringify(events.body)).to.not.equal(undefined);
      expect(event!.message).to.include(rotated.fingerprint256);
      expect(event!.message).to.not.match(/PRIVATE KEY/);
    } finally {
      session.stdin?.end();
      session.kill();
    }

    // Bad input: unknown service 404, a service without TLS 409 naming tls, a bad name exit 2.
    const unknown = await cluster().api<{ error: { field: string } }>(
      'POST',
      '/v3/service_instances/nosuch/actions/rotate-certificate',
    );
    expect(unknown.status).to.equal(404);
    const off = await cluster().api<ServiceView>('PATCH', '/v3/service_instances/pgo', { tls: 'off' });
    expect(off.status, JSON.stringify(off.body)).to.equal(200);
    const refused = await cluster().api<{ error: { code: string; field: string } }>(
      'POST',
      '/v3/service_instances/pgo/actions/rotate-certificate',
    );
    expect(refused.status, JSON.stringify(refused.body)).to.equal(409);
    expect(refused.body.error.field).to.equal('tls');
    const bad = await runSfToExit(['rotate-certificate', 'Not_A_Name'], env);
    expect(bad.code).to.equal(2);
    expect(bad.output.trim().split('\n')).to.have.length(1);
  });

  it('refuses a replication connection without TLS', async () => {
    const primary = primaryOf(view);
    const text = await cluster().state.hget(KEYS.cell(primary.cell).desired, primary.id);
    const repl = (JSON.parse(text!) as InstanceSpec).credentials!.replication;
    const plain = await psql(
      `host=127.0.0.1 port=${primary.port} user=${repl.username} dbname=postgres replication=true sslmode=disable`,
      'IDENTIFY_SYSTEM',
      repl.password,
    );
    expect(plain.code).to.equal(1);
    expect(plain.stderr).to.match(/no pg_hba\.conf entry/);
    const bare = await psql(
      `host=127.0.0.1 port=${primary.port} user=${repl.username} dbname=postgres replication=true sslmode=verify-full sslrootcert=${caFile}`,
      'IDENTIFY_SYSTEM',
      repl.password,
    );
    expect(bare.code).to.equal(1);
    expect(bare.stderr).to.match(/requires a valid client certificate/);
    const tls = await psql(
      `host=127.0.0.1 port=${primary.port} user=${repl.username} dbname=postgres replication=true sslmode=verify-full sslrootcert=${caFile} ${withCert}`,
      'IDENTIFY_SYSTEM',
      repl.password,
    );
    expect(tls.code, tls.stderr).to.equal(0);
  });

  it('requires a client certificate from the platform CA of every TLS client, and takes no plaintext SQL from other networks', async () => {
    const other = await PlatformCa.open(join(dir, 'other-ca'));
    const foreign = await other.ensure('intruder', ['intruder']);
    for (const inst of view.instances) {
      const admin = await adminUser(cluster(), view, inst.id);
      const conn = `host=127.0.0.1 port=${inst.port} user=${admin.username} dbname=postgres sslmode=verify-full sslrootcert=${caFile}`;
      const bare = await psql(conn, 'select 1', admin.password);
      expect(bare.code, `${inst.id} without a client certificate`).to.equal(1);
      expect(bare.stderr).to.match(/requires a valid client certificate/);
      const intruder = await psql(
        `${conn} sslcert=${foreign.certFile} sslkey=${foreign.keyFile}`,
        'select 1',
        admin.password,
      );
      expect(intruder.code, `${inst.id} with a certificate of another CA`).to.equal(1);
      expect(intruder.stderr).to.match(/certificate|alert|SSL/i);
      // The router's certificate (the platform CA's) is served, with the user's password still asked.
      const served = await psql(`${conn} ${withCert}`, ENGINE_SIDE_SSL, admin.password);
      expect(served.code, served.stderr).to.equal(0);
      expect(served.stdout).to.equal('true');
      const wrongPassword = await psql(`${conn} ${withCert}`, 'select 1', 'not-the-password');
      expect(wrongPassword.code).to.equal(1);
      expect(wrongPassword.stderr).to.match(/password authentication failed/);
      // Plaintext SQL from another address of a trusted network: refused before any password.
      const answer = await plaintextStartup('127.0.0.3', inst.port!, admin.username);
      expect(answer).to.match(/no pg_hba\.conf entry for host "127\.0\.0\.3".*no encryption/);
    }
  });

  it('fails over with TLS on: the old primary is rewound and streams again over TLS', async () => {
    const old = primaryOf(view);
    process.kill(await enginePid(cluster(), view, old.id), 'SIGKILL');
    const after = await cluster().waitForService('pgr', 180_000, promotedFrom(old.id, view.epoch));
    expect(primaryOf(after).id).to.not.equal(old.id);
    let last: string;
    const deadline = Date.now() + 60_000;
    while (!/^t\|TLSv1\.[23]$/.test((last = await replicationSsl(after)))) {
      if (Date.now() > deadline) throw new Error(`replication after failover not over TLS: ${last}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const write = await throughRouter(after, 'insert into t values (2); select count(*) from t');
    expect(write.code, write.stderr).to.equal(0);
    expect(write.stdout).to.equal('2');
  });
  it('moves a replica by catch-up with TLS on: the new replica copies and streams over TLS with its certificate', async () => {
    const before = await cluster().waitForService('pgr');
    const replica = before.instances.find((i) => i.role === 'replica')!;
    const used = new Set(before.instances.map((i) => i.cell));
    const to = cluster().cells.find((c) => !used.has(c.name))!.name;
    let res = await cluster().api<{ id: string; method: string }>('POST', '/v3/service_instances/pgr/actions/move', {
      to,
      instance: replica.id,
    });
    // A loaded machine's cell can look dead for a moment; asked again once it is back.
    const deadline = Date.now() + 60_000;
    while (res.status !== 202 && /not alive|no live cell/.test(JSON.stringify(res.body)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      res = await cluster().api('POST', '/v3/service_instances/pgr/actions/move', { to, instance: replica.id });
    }
    expect(res.status, JSON.stringify(res.body)).to.equal(202);
    expect(res.body.method).to.equal('catch-up');
    let state = '';
    const end = Date.now() + 240_000;
    while (state !== 'done' && state !== 'failed') {
      if (Date.now() > end) throw new Error(`move not finished: ${state}`);
      await new Promise((r) => setTimeout(r, 500));
      const m = await cluster().api<{ state: string; error?: string }>('GET', `/v3/moves/${res.body.id}`);
      state = m.body.state === 'failed' ? `failed: ${m.body.error ?? ''}` : m.body.state;
      if (state.startsWith('failed')) throw new Error(`move ${state}`);
    }
    const after = await cluster().waitForService('pgr', 120_000, (s) =>
      s.instances.some((i) => i.cell === to && i.role === 'replica' && i.state === 'running'),
    );
    let last: string;
    const streamDeadline = Date.now() + 60_000;
    while (!/^t\|TLSv1\.[23]$/.test((last = await replicationSsl(after)))) {
      if (Date.now() > streamDeadline) throw new Error(`moved replica not streaming over TLS: ${last}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const count = await throughRouter(after, 'select count(*) from t');
    expect(count.stdout, count.stderr).to.equal('2');
  });
});
