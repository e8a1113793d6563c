/**
 * Pods: an instance's sidecars (Debian's Prometheus exporters) on both executors, with real
 * engines. Each instance's exporter answers `/metrics` with its engine's metrics, reaches the
 * engine as the service's monitoring user, whose password is only in a secrets file (mode 0600),
 * never in argv, the environment or `docker inspect`; ends with the instance, and is adopted
 * again by a restarted cell.
 */
import { execFile } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { InstanceCredentials } from '../../protocol/cell-protocol';
import path from 'node:path';
import { PlatformCa } from '../../common';
import { CellInstances } from '../../cell/cell-instances';
import { DockerApi } from '../../cell/docker-api';
import { withMonitoringUser } from '../../cell/engine-credentials';
import { createEngineRegistry } from '../../cell/engine-registry';
import { keyLayout } from '../../protocol/keys';
import { DockerExecutor } from '../../cell/executor-docker';
import type { Executor, InstanceHandle } from '../../cell/executor';
import { ProcessExecutor } from '../../cell/executor-process';
import { findBinary } from '../../cell/run-command';
import { eventually, spec, tempCellDir } from '../helpers/cell-harness';
import { releaseDockerDaemon, useDockerDaemon } from '../helpers/docker-daemon';
import { httpsGet } from '../helpers/https-get';

const CREDS: InstanceCredentials = {
  version: 1,
  admin: { username: 'sf_admin', password: 'admin-password-sidecar-0123' },
  replication: { username: 'sf_replication', password: 'replication-password-0123' },
  monitoring: { username: 'sf_monitor', password: 'monitoring-password-sidecar-0123' },
  users: [],
};
const PASSWORDS = [CREDS.admin.password, CREDS.replication.password, CREDS.monitoring!.password];
const run = promisify(execFile);

/**
 * No password where other users of the host can read it: the sidecar's argv and environment
 * (`/proc/PID/...`) and, on docker, its container's configuration (`docker inspect`). The
 * monitoring password is in the secrets file, mode 0600, owned by the sidecar's user.
 */
async function checkNoPassword(suite: Suite, h: InstanceHandle, kind: string): Promise<void> {
  const sidecar = sidecarOf(h);
  const places: Array<[string, string]> = [];
  if (sidecar.pid) {
    places.push(['cmdline', await readFile(`/proc/${sidecar.pid}/cmdline`, 'latin1')]);
    places.push(['environ', await readFile(`/proc/${sidecar.pid}/environ`, 'latin1')]);
  }
  const inspected = await suite.inspectSidecar?.(h.instanceId);
  if (suite.name === 'docker') expect(inspected, `docker inspect of the sidecar of ${h.instanceId}`).to.be.a('string');
  if (inspected) places.push(['docker inspect', inspected]);
  expect(places.length).to.be.greaterThan(0);
  for (const [where, text] of places) for (const p of PASSWORDS) expect(text, where).to.not.contain(p);
  const secrets = await stat(`${h.volumeDir}/sidecar-${kind}.secret`);
  expect(secrets.mode & 0o777).to.equal(0o600);
  // The engine's user, as the sidecar runs (root runs the tests; engines never run as root).
  expect(secrets.uid).to.not.equal(0);
  if (sidecar.pid) expect((await stat(`/proc/${sidecar.pid}`)).uid).to.equal(secrets.uid);
}

async function metrics(port: number, host = '127.0.0.1'): Promise<string> {
  const res = await fetch(`http://${host}:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
  expect(res.status).to.equal(200);
  return res.text();
}

async function answers(port: number): Promise<boolean> {
  return fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2_000) }).then(
    () => true,
    () => false,
  );
}

function sidecarOf(handle: InstanceHandle): { port: number; pid: number | null; tls?: boolean } {
  expect(handle.sidecars, `sidecars of ${handle.instanceId}`).to.have.length(1);
  return (handle.sidecars ?? [])[0];
}

/** Where a cell's instances listen and what its engines serve, when not the defaults. */
interface CellOptions {
  listenHost: string;
  engines: ReturnType<typeof createEngineRegistry>;
  tls: { certFile: string; keyFile: string; caFile: string };
}

interface Suite {
  name: string;
  /** Null when the executor cannot run here (the suite skips, saying why). */
  setUp(): Promise<string | null>;
  tearDown(): Promise<void>;
  make(dataDir: string, portRange: { from: number; to: number }, cell?: CellOptions): Executor;
  /** `docker inspect` of an instance's sidecar container, as JSON text (docker only). */
  inspectSidecar?(instanceId: string): Promise<string | undefined>;
}

function sidecarSuite(suite: Suite): void {
  describe(`sidecars (${suite.name} executor)`, function () {
    this.timeout(300_000);
    let cell: { dir: string; remove(): Promise<void> };
    let executor: Executor;
    const range = suite.name === 'docker' ? { from: 46500, to: 46999 } : { from: 46000, to: 46499 };

    before(async function () {
      this.timeout(3_600_000);
      const skip = await suite.setUp();
      if (skip) {
        console.log(`      skipped: ${skip}`);
        this.skip();
      }
    });

    after(() => suite.tearDown());

    beforeEach(async () => {
      cell = await tempCellDir();
      executor = suite.make(cell.dir, range);
    });

    afterEach(async () => {
      for (const h of executor?.handles() ?? []) await executor.kill(h.instanceId);
      await cell?.remove();
    });

    it('runs a redis-exporter beside each redis instance, answering with its engine metrics', async () => {
      const primary = await executor.start(
        spec({ instanceId: 'r-0', engine: 'redis', credentials: CREDS, sidecars: ['redis-exporter'], replicas: 1 }),
      );
      const replica = await executor.start(
        spec({
          instanceId: 'r-1',
          engine: 'redis',
          role: 'replica',
          replicas: 1,
          credentials: CREDS,
          sidecars: ['redis-exporter'],
          replicaOf: { host: '127.0.0.1', port: primary.port },
        }),
      );
      for (const [h, role] of [
        [primary, 'master'],
        [replica, 'slave'],
      ] as const) {
        const sidecar = sidecarOf(h);
        expect(sidecar.port).to.be.within(range.from, range.to);
        const text = await eventually(
          async () => {
            const t = await metrics(sidecar.port);
            return /^redis_up 1$/m.test(t) && t.includes(`role="${role}"`) ? t : undefined;
          },
          30_000,
          `redis_up 1 (${role}) from the exporter of ${h.instanceId}`,
        );
        expect(text).to.match(new RegExp(`^redis_instance_info\\{.*tcp_port="${h.port}"`, 'm'));
        await checkNoPassword(suite, h, 'redis-exporter');
      }
      // The monitoring user reads INFO and nothing else: no key, no CONFIG (masterauth).
      const monitor = new Redis({
        port: primary.port,
        host: '127.0.0.1',
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        ...CREDS.monitoring,
      });
      try {
        await monitor.connect();
        expect(await monitor.info('replication')).to.match(/role:master/);
        const denied: Array<[string, ...string[]]> = [
          ['GET', 'k'],
          ['SET', 'k', 'v'],
          ['CONFIG', 'GET', 'masterauth'],
          ['ACL', 'LIST'],
        ];
        for (const [cmd, ...args] of denied)
          expect(await monitor.call(cmd, ...args).catch((e: Error) => e.message), cmd).to.match(/NOPERM/);
      } finally {
        monitor.disconnect();
      }
    });

    it('runs a postgres-exporter beside each postgres instance, answering with its engine metrics', async () => {
      const primary = await executor.start(
        spec({
          instanceId: 'pg-0',
          engine: 'postgres',
          credentials: CREDS,
          sidecars: ['postgres-exporter'],
          replicas: 1,
        }),
      );
      const replica = await executor.start(
        spec({
          instanceId: 'pg-1',
          engine: 'postgres',
          role: 'replica',
          replicas: 1,
          credentials: CREDS,
          sidecars: ['postgres-exporter'],
          replicaOf: { host: '127.0.0.1', port: primary.port },
        }),
      );
      for (const h of [primary, replica]) {
        const sidecar = sidecarOf(h);
        await eventually(
          async () => /^pg_up 1$/m.test(await metrics(sidecar.port)),
          30_000,
          `pg_up 1 from the exporter of ${h.instanceId}`,
        );
        await checkNoPassword(suite, h, 'postgres-exporter');
      }
      // The monitoring role is pg_monitor's member and no more.
      const { stdout } = await run(
        'psql',
        [
          '-h',
          '127.0.0.1',
          '-p',
          String(primary.port),
          '-U',
          'sf_monitor',
          '-d',
          'postgres',
          '-w',
          '-XAtc',
          "select rolsuper, rolcreaterole, rolreplication, pg_has_role('sf_monitor', 'pg_monitor', 'member') from pg_roles where rolname = current_user",
        ],
        { env: { PATH: process.env.PATH ?? '', PGPASSWORD: CREDS.monitoring!.password } },
      );
      expect(stdout.trim()).to.equal('f|f|f|t');
      // A standby is reported as one: the exporter reads the engine it sits beside.
      expect(await metrics(sidecarOf(replica).port)).to.match(/^pg_static\{.*\} 1$/m);
    });

    describe('on a cell with a certificate from the platform CA', () => {
      /** An address of this host other than loopback, if it has one. */
      const hostAddress = Object.values(networkInterfaces())
        .flat()
        .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
      let ca: PlatformCa;
      let scraper: { ca: Buffer; cert: Buffer; key: Buffer };
      let cellTls: { certFile: string; keyFile: string; caFile: string };
      let serviceCert: { certFile: string; keyFile: string };
      beforeEach(async () => {
        ca = await PlatformCa.open(path.join(cell.dir, 'ca'));
        // The cell's certificate names its addresses; the service's names the service and
        // loopback's usual address, not 127.0.0.2 (as on a cell with an address of its own).
        const cellCert = await ca.ensure('cell', [
          'localhost',
          '127.0.0.1',
          '127.0.0.2',
          ...(hostAddress ? [hostAddress] : []),
        ]);
        cellTls = { certFile: cellCert.certFile, keyFile: cellCert.keyFile, caFile: ca.certFile };
        const svc = await ca.ensure('service-svc', ['svc', '127.0.0.1']);
        serviceCert = { certFile: svc.certFile, keyFile: svc.keyFile };
        const client = await ca.ensure('prometheus', ['prometheus']);
        scraper = {
          ca: await readFile(ca.certFile),
          cert: await readFile(client.certFile),
          key: await readFile(client.keyFile),
        };
      });
      const tlsCell = (listenHost: string, trustCidrs: string[] = []): Executor =>
        suite.make(cell.dir, range, {
          listenHost,
          tls: cellTls,
          engines: createEngineRegistry({ redis: { tls: cellTls }, postgres: { tls: cellTls, trustCidrs } }),
        });

      /** Exporters serve HTTPS to a client with a certificate of the CA and to nobody else. */
      async function checkHttpsOnly(host: string, sidecar: { port: number }, up: RegExp): Promise<string> {
        const text = await eventually(
          async () => {
            const r = await httpsGet(`https://${host}:${sidecar.port}/metrics`, scraper);
            return r.status === 200 && up.test(r.body) ? r.body : undefined;
          },
          30_000,
          `${up} from the exporter on ${host}:${sidecar.port}`,
        );
        const noCert = await httpsGet(`https://${host}:${sidecar.port}/metrics`, { ca: scraper.ca }).then(
          (r) => `answered ${r.status}`,
          (e: Error) => e.message,
        );
        expect(noCert, 'HTTPS without a client certificate').to.not.match(/^answered/);
        const other = await PlatformCa.open(path.join(cell.dir, 'other-ca'));
        const stranger = await other.ensure('prometheus', ['prometheus']);
        const wrongCa = await httpsGet(`https://${host}:${sidecar.port}/metrics`, {
          ca: scraper.ca,
          cert: await readFile(stranger.certFile),
          key: await readFile(stranger.keyFile),
        }).then(
          (r) => `answered ${r.status}`,
          (e: Error) => e.message,
        );
        expect(wrongCa, 'a client certificate another CA signed').to.not.match(/^answered/);
        const plain = await fetch(`http://${host}:${sidecar.port}/metrics`, {
          signal: AbortSignal.timeout(5_000),
        }).then(
          async (r) => `answered ${r.status}: ${(await r.text()).slice(0, 40)}`,
          (e: Error) => e.message,
        );
        expect(plain, 'plain HTTP').to.not.match(/^answered 200/);
        return text;
      }

      const tlsExecutors: Executor[] = [];
      afterEach(async () => {
        for (const e of tlsExecutors.splice(0)) for (const h of e.handles()) await e.kill(h.instanceId);
      });
      /** An instance with its exporter, served TLS with the service's certificate, on a cell at `listenHost`. */
      function startTls(
        listenHost: string,
        instanceId: string,
        engine: 'redis' | 'postgres',
        trustCidrs: string[] = [],
      ): Promise<InstanceHandle> {
        const executor2 = tlsCell(listenHost, trustCidrs);
        tlsExecutors.push(executor2);
        const sidecar = engine === 'redis' ? 'redis-exporter' : 'postgres-exporter';
        return executor2.start(
          spec({ instanceId, engine, credentials: CREDS, sidecars: [sidecar], tls: true, tlsCertificate: serviceCert }),
        );
      }

      it('exports a TLS-only redis on an address its certificate does not name (through its unix socket), over HTTPS to certificate holders only', async () => {
        const listenHost = '127.0.0.2';
        const h = await startTls(listenHost, 'r-tls', 'redis');
        const sidecar = sidecarOf(h);
        expect(sidecar.tls).to.equal(true);
        const text = await checkHttpsOnly(listenHost, sidecar, /^redis_up 1$/m);
        expect(text).to.match(/^redis_instance_info\{.*role="master"/m);
        // The engine still refuses plaintext on its port: TLS only there.
        const plain = new Redis({ host: listenHost, port: h.port, lazyConnect: true, maxRetriesPerRequest: 0 });
        plain.on('error', () => undefined);
        const refused = await plain
          .connect()
          .then(() => plain.ping())
          .then(
            () => 'answered',
            (e: Error) => e.message,
          );
        plain.disconnect();
        expect(refused).to.not.equal('answered');
        await checkNoPassword(suite, h, 'redis-exporter');
      });

      it('exports postgres over HTTPS to certificate holders only', async () => {
        const h = await startTls('127.0.0.1', 'p-tls', 'postgres');
        await checkHttpsOnly('127.0.0.1', sidecarOf(h), /^pg_up 1$/m);
        await checkNoPassword(suite, h, 'postgres-exporter');
      });

      it('exports postgres listening on an address other than loopback, where it takes TLS with a platform client certificate only', async function () {
        // The engine takes no plaintext SQL from a network other than loopback: the exporter
        // connects over TLS and presents the engine's certificate.
        const address = hostAddress;
        if (!address) return this.skip();
        const h = await startTls(address, 'p-tls-addr', 'postgres', [`${address}/32`]);
        // pg_up 1: from this address pg_hba.conf has only `hostssl ... clientcert=verify-ca` lines.
        await checkHttpsOnly(address, sidecarOf(h), /^pg_up 1$/m);
        const hba = await readFile(path.join(h.dataDir, 'pg_hba.conf'), 'utf8');
        expect(hba).to.contain(`hostssl all all ${address}/32 scram-sha-256 clientcert=verify-ca`);
        expect(hba).to.not.match(new RegExp(`^host(nossl)? all all ${address.replace(/\./g, '\\.')}/32`, 'm'));
        await checkNoPassword(suite, h, 'postgres-exporter');
      });
    });

    it('stops the sidecars with the instance, whether killed or stopped', async () => {
      const killed = await executor.start(
        spec({ instanceId: 'r-kill', engine: 'redis', credentials: CREDS, sidecars: ['redis-exporter'] }),
      );
      const stopped = await executor.start(
        spec({ instanceId: 'r-stop', engine: 'redis', credentials: CREDS, sidecars: ['redis-exporter'] }),
      );
      const k = sidecarOf(killed);
      const s = sidecarOf(stopped);
      expect(await answers(k.port)).to.equal(true);
      await executor.kill('r-kill');
      expect(await answers(k.port)).to.equal(false);
      await executor.stop('r-stop');
      expect(await answers(s.port)).to.equal(false);
    });

    it('gives a service from before monitoring users one when the restarted cell reconciles it, and starts its exporter', async () => {
      // As an older cell ran it: credentials without a monitoring user, so no exporter.
      const { monitoring: _none, ...older } = CREDS;
      const oldSpec = spec({ instanceId: 'r-old', engine: 'redis', credentials: older, sidecars: ['redis-exporter'] });
      const h = await executor.start(oldSpec);
      expect(h.sidecars ?? []).to.deep.equal([]);
      // The cell restarts with this code: it adopts the engine, then reconciles the desired spec.
      const reborn = suite.make(cell.dir, range);
      const reports = new Map<string, unknown>();
      const instances = new CellInstances({
        cell: 'c1',
        dataDir: cell.dir,
        advertiseHost: '127.0.0.1',
        executors: { [reborn.kind]: reborn },
        defaultExecutor: reborn.kind,
        engines: createEngineRegistry(),
        redis: undefined,
        keys: keyLayout('sf-test'),
        report: (id, actual) => reports.set(id, actual),
      });
      try {
        await instances.load();
        await instances.reconcile(new Map([['r-old', oldSpec]]));
        const adopted = reborn.handle('r-old');
        expect(adopted, 'the adopted instance').to.not.equal(undefined);
        const sidecar = sidecarOf(adopted!);
        await eventually(
          async () => /^redis_up 1$/m.test(await metrics(sidecar.port)),
          30_000,
          'redis_up 1 from the exporter started after the monitoring user',
        );
        // The user is derived from the admin password: every cell of the service gets the same one.
        const derived = withMonitoringUser(older).monitoring!;
        expect(derived.username).to.equal('sf_monitor');
        expect(withMonitoringUser(older).monitoring).to.deep.equal(derived);
        const monitor = new Redis({
          port: adopted!.port,
          host: '127.0.0.1',
          lazyConnect: true,
          maxRetriesPerRequest: 0,
          ...derived,
        });
        try {
          await monitor.connect();
          expect(await monitor.info('replication')).to.match(/role:master/);
          expect(await monitor.call('GET', 'k').catch((e: Error) => e.message)).to.match(/NOPERM/);
        } finally {
          monitor.disconnect();
        }
        await checkNoPassword(suite, adopted!, 'redis-exporter');
        expect(await readFile(`${adopted!.volumeDir}/sidecar-redis-exporter.secret`, 'utf8')).to.contain(
          derived.password,
        );
        // Idempotent: another pass changes nothing.
        await instances.reconcile(new Map([['r-old', oldSpec]]));
        expect(reborn.handle('r-old')?.sidecars).to.deep.equal(adopted!.sidecars);
        expect(reports.get('r-old')).to.have.nested.property('sidecars[0].port', sidecar.port);
      } finally {
        await instances.shutdown(false);
        await reborn.kill('r-old');
      }
    });

    it('re-adopts the sidecars of its running instances after the cell restarts', async () => {
      const h = await executor.start(
        spec({ instanceId: 'r-adopt', engine: 'redis', credentials: CREDS, sidecars: ['redis-exporter'] }),
      );
      const before = sidecarOf(h);
      const reborn = suite.make(cell.dir, range);
      const adopted = await reborn.adopt();
      expect(adopted.map((a) => a.instanceId)).to.deep.equal(['r-adopt']);
      expect(sidecarOf(adopted[0]).port).to.equal(before.port);
      expect(await metrics(before.port)).to.match(/^redis_up 1$/m);
      await reborn.kill('r-adopt');
      expect(await answers(before.port)).to.equal(false);
    });
  });
}

sidecarSuite({
  name: 'process',
  async setUp() {
    for (const binary of ['prometheus-redis-exporter', 'prometheus-postgres-exporter'])
      if (!(await findBinary(binary))) return `${binary} is not installed (npm run setup installs it)`;
    return null;
  },
  async tearDown() {},
  make: (dataDir, portRange, cell) => new ProcessExecutor({ dataDir, portRange, ...cell }),
});

let socketPath = '';
sidecarSuite({
  name: 'docker',
  async setUp() {
    const daemon = await useDockerDaemon();
    if (typeof daemon === 'string') return daemon;
    socketPath = daemon.socketPath;
    await new DockerApi({ socketPath }).call('GET', '/_ping');
    return null;
  },
  tearDown: () => releaseDockerDaemon(),
  make: (dataDir, portRange, cell) => new DockerExecutor({ dataDir, portRange, docker: { socketPath }, ...cell }),
  async inspectSidecar(instanceId) {
    const api = new DockerApi({ socketPath });
    const filters = encodeURIComponent(JSON.stringify({ label: [`sf.sidecar-of=${instanceId}`] }));
    const list = (await api.call('GET', `/containers/json?filters=${filters}`)).body as Array<{ Id: string }>;
    if (!list[0]) return undefined;
    return JSON.stringify((await api.call('GET', `/containers/${list[0].Id}/json`)).body);
  },
});
