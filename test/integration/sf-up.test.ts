import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { fetchWithCa } from '../../common/https-fetch';
import { loadNativeBindings } from '../../native-bindings';
import type { ServiceView } from '../../control/services';
import { freePort } from '../helpers/free-port';
import { freePortBlock, releasePortBlock } from '../helpers/service-cluster';
import { runSf, runSfToExit, type SfProcess } from '../helpers/sf-process';
import { eventually } from '../helpers/tcp-client';
import { httpsGet } from '../helpers/https-get';

describe('sf up', function () {
  this.timeout(300_000);
  let home: string;
  let up: SfProcess | undefined;
  let env: NodeJS.ProcessEnv;
  let ports: { control: number; admin: number; redis: number; routeBase: number; cellBase: number };

  before(async () => {
    home = await mkdtemp(path.join(tmpdir(), 'sf-up-test-'));
    // Engines run as their own users (redis, postgres) when the test runs as root: they must reach
    // their volumes under the data dir.
    await chmod(home, 0o755);
    // Two cells, 100 instance ports each, side by side.
    const cellBase = await freePortBlock(200);
    ports = {
      control: await freePort(),
      admin: await freePort(),
      redis: await freePort(),
      routeBase: await freePortBlock(),
      cellBase,
    };
    env = {
      SF_HOME: home,
      SF_REDIS_URL: '',
      SF_API_TOKEN: '',
      // Control speaks HTTPS by default; the CLI finds the CA through what sf up records in SF_HOME.
      SF_CONTROL_URL: `https://127.0.0.1:${ports.control}`,
      SF_LOG_LEVEL: 'warn',
    };
  });

  after(async () => {
    if (up && up.child.exitCode === null) {
      up.child.kill('SIGTERM');
      await new Promise((r) => up!.child.once('exit', r));
    }
    await rm(home, { recursive: true, force: true });
    releasePortBlock(ports.routeBase);
    releasePortBlock(ports.cellBase);
  });

  const upArgs = (): string[] => [
    'up',
    '--data-dir',
    path.join(home, 'data'),
    '--cells',
    '2',
    '--control-port',
    String(ports.control),
    '--router-admin-port',
    String(ports.admin),
    '--redis-port',
    String(ports.redis),
    '--cell-port-base',
    String(ports.cellBase),
    '--route-ports',
    `${ports.routeBase}-${ports.routeBase + 99}`,
    // Each cell picks a free metrics port: fixed ones would collide with other test runs.
    '--cell-metrics-port-base',
    '0',
  ];

  it('starts state, control, a router and cells, and the CLI works with no configuration', async () => {
    up = runSf(upArgs(), env);
    await eventually(() => up!.output().includes('Try next:'), 180_000, 'sf up ready');
    expect(up.output()).to.match(/sf create-service redis cache/);
    const token = await stat(path.join(home, 'admin-tokens', `127.0.0.1-${ports.control}`));
    expect(token.mode & 0o777).to.equal(0o600);

    const cells = await runSfToExit(['cells', '--json'], env);
    expect(cells.code).to.equal(0);
    expect((JSON.parse(cells.output) as Array<{ name: string; alive: boolean }>).map((c) => c.name)).to.deep.equal([
      'cell-1',
      'cell-2',
    ]);

    const t0 = performance.now();
    // With an exporter sidecar per instance: prometheus-config below lists it as a target.
    const created = await runSfToExit(
      ['create-service', 'redis', 'cache', '--replicas', '1', '--sidecar', 'redis-exporter', '--wait', '--json'],
      env,
    );
    expect(created.code, created.output).to.equal(0);
    const view = JSON.parse(created.output) as ServiceView;
    expect(view.status).to.equal('running');
    // Nothing answers without credentials: a service key, through the CLI as a user would.
    const keyed = await runSfToExit(['create-service-key', 'cache', 'app', '--json'], env);
    expect(keyed.code, keyed.output).to.equal(0);
    const key = JSON.parse(keyed.output) as {
      username: string;
      password: string;
      port: number;
      uri: string;
      ca_certificate?: string;
    };
    expect(key.port).to.equal(view.port);
    // Services under sf up require TLS: the key's URI says rediss:// and the key carries the CA.
    expect(view.tls).to.equal('required');
    expect(key.uri).to.match(/^rediss:\/\//);
    const client = new Redis({
      port: view.port,
      host: '127.0.0.1',
      maxRetriesPerRequest: 3,
      username: key.username,
      password: key.password,
      tls: { ca: key.ca_certificate, servername: 'localhost' },
    });
    try {
      expect(await client.ping()).to.equal('PONG');
    } finally {
      client.disconnect();
    }
    console.log(
      `      sf create-service redis --wait then PING through the router: ${(performance.now() - t0).toFixed(0)} ms`,
    );
    // Engines under sf up speak TLS only, so the route terminates and re-encrypts; with the addon
    // built its relay threads do both (a fall-back to Node's TLS would show as relay 'js').
    const health = (await (await fetch(`http://127.0.0.1:${ports.admin}/health`)).json()) as {
      relay: string;
      tlsPorts: Array<{ port: number; tls: string; relay: string; backendTls?: boolean }>;
      accept: { jsPorts: Array<{ port: number; reason: string }> };
    };
    const routed = health.tlsPorts.find((p) => p.port === view.port);
    expect(routed, JSON.stringify(health.tlsPorts)).to.include({ tls: 'terminate', backendTls: true });
    const nativeExpected =
      loadNativeBindings() !== undefined &&
      process.env.SF_RELAY !== 'js' &&
      process.env.SF_NATIVE_ACCEPT !== 'off' &&
      process.env.SF_NATIVE_TLS !== 'off';
    expect(routed!.relay).to.equal(nativeExpected ? 'native' : 'js');
    if (nativeExpected) expect(health.accept.jsPorts.map((p) => p.port)).to.not.include(view.port);

    const shown = await runSfToExit(['service', 'cache', '--json'], env);
    const detail = JSON.parse(shown.output) as ServiceView;
    expect(detail.port).to.equal(view.port);
    for (const i of detail.instances) expect(i).to.include.keys('id', 'cell', 'role', 'state', 'epoch');
    const human = await runSfToExit(['service', 'cache'], env);
    expect(human.output).to.match(/INSTANCE\s+ROLE\s+STATE\s+EPOCH/);
    const usage = await runSfToExit(['create-service', 'redis', 'Bad!'], env);
    expect(usage.code).to.equal(2);
  });

  it('serves metrics from control (with a token), the router and every cell, and prints a scrape configuration promtool accepts', async () => {
    const out = up!.output();
    expect(out).to.include(`control https://127.0.0.1:${ports.control}/metrics`);
    expect(out).to.include(`router  http://127.0.0.1:${ports.admin}/metrics`);
    expect(out).to.match(/cells {3}http:\/\/127\.0\.0\.1:\d+\/metrics http:\/\/127\.0\.0\.1:\d+\/metrics/);

    const controlMetrics = `https://127.0.0.1:${ports.control}/metrics`;
    const ca = await readFile(path.join(home, 'data', 'ca.pem'));
    expect((await fetchWithCa(controlMetrics, {}, ca)).status).to.equal(401);
    const token = (await readFile(path.join(home, 'admin-tokens', `127.0.0.1-${ports.control}`), 'utf8')).trim();
    let text = '';
    await eventually(
      async () => {
        text = await (await fetchWithCa(controlMetrics, { headers: { authorization: `Bearer ${token}` } }, ca)).text();
        const replicaHealthy =
          /sf_service_instance_healthy\{service="cache",instance="cache-\d+",cell="cell-\d",role="replica"\} 1/;
        return replicaHealthy.test(text) && /sf_service_replication_lag_bytes\{service="cache"/.test(text);
      },
      15_000,
      'instance health in control metrics',
    );
    expect(text).to.match(/sf_control_reconcile_passes_total\{outcome="ok"\} [1-9]/);
    expect(text).to.match(/sf_control_reconcile_duration_seconds_count [1-9]/);
    expect(text).to.match(/sf_control_leader 1/);
    expect(text).to.match(/sf_control_leader_changes_total\{change="elected"\} 1/);
    expect(text).to.match(/sf_service_epoch\{service="cache"\} 1/);

    const cells = JSON.parse((await runSfToExit(['cells', '--json'], env)).output) as Array<{ metrics_url: string }>;
    // Cells' /metrics take the platform's admin token (their SF_API_TOKEN under sf up), and nothing less.
    const adminToken = (await readFile(path.join(home, 'admin-tokens', `127.0.0.1-${ports.control}`), 'utf8')).trim();
    for (const cell of cells) {
      expect((await fetch(cell.metrics_url)).status, `${cell.metrics_url} without a token`).to.equal(401);
      const t = await (await fetch(cell.metrics_url, { headers: { authorization: `Bearer ${adminToken}` } })).text();
      expect(t).to.match(/sf_cell_capacity_mb \d+/);
      expect(t).to.match(
        /sf_cell_instance_state\{service="cache",instance="cache-\d+",role="(primary|replica)",engine="redis",state="running"\} 1/,
      );
      // The service key above was a credentials order to each instance's cell.
      expect(t).to.match(/sf_cell_order_duration_seconds_count\{type="credentials"\} [1-9]/);
    }
    // So does the router's admin endpoint, for its table and metrics.
    const routerMetrics = `http://127.0.0.1:${ports.admin}/metrics`;
    expect((await fetch(routerMetrics)).status, 'router metrics without a token').to.equal(401);
    const routerText = await (
      await fetch(routerMetrics, { headers: { authorization: `Bearer ${adminToken}` } })
    ).text();
    expect(routerText).to.match(/sf_router_table_version [1-9]/);

    const config = await runSfToExit(['prometheus-config'], env);
    expect(config.code, config.output).to.equal(0);
    expect(config.output).to.include(
      `credentials_file: "${path.join(home, 'admin-tokens', `127.0.0.1-${ports.control}`)}"`,
    );
    // One sf-sidecar-tls target per instance: its host and exporter port, with who it exports.
    // The cells have the platform CA's certificates, so exporters serve HTTPS to holders of a
    // client certificate of that CA only: the one sf up issued for Prometheus, recorded for sf.
    const service = JSON.parse((await runSfToExit(['service', 'cache', '--json'], env)).output) as ServiceView;
    const recorded = JSON.parse(
      await readFile(path.join(home, 'controls', `127.0.0.1-${ports.control}.json`), 'utf8'),
    ) as { ca_file: string; scrape_cert_file: string; scrape_key_file: string };
    expect(config.output).to.include('job_name: sf-sidecar-tls');
    expect(config.output).to.not.include('job_name: sf-sidecar\n');
    expect(config.output).to.include(
      `      ca_file: "${recorded.ca_file}"\n      cert_file: "${recorded.scrape_cert_file}"\n      key_file: "${recorded.scrape_key_file}"`,
    );
    const scraper = {
      ca: await readFile(recorded.ca_file),
      cert: await readFile(recorded.scrape_cert_file),
      key: await readFile(recorded.scrape_key_file),
    };
    for (const i of service.instances) {
      const sidecar = i.sidecars?.find((s) => s.name === 'redis-exporter');
      expect(sidecar?.port, `exporter port of ${i.id}`).to.be.a('number');
      expect(sidecar?.tls, `exporter of ${i.id} over HTTPS`).to.equal(true);
      expect(config.output).to.include(
        `- targets: ["${i.host}:${sidecar?.port}"]\n        labels: {service: "cache", instance: "${i.id}", engine: "redis", sidecar: "redis-exporter"}`,
      );
      const url = `https://${i.host}:${sidecar?.port}/metrics`;
      expect((await httpsGet(url, scraper)).body).to.match(/^redis_up 1$/m);
      const anonymous = await httpsGet(url, { ca: scraper.ca }).then(
        (r) => `answered ${r.status}`,
        (e: Error) => e.message,
      );
      expect(anonymous, 'an exporter without a client certificate').to.not.match(/^answered/);
    }
    const file = path.join(home, 'prometheus.yml');
    await writeFile(file, config.output);
    const check = await new Promise<{ code: number | null; output: string }>((resolve) =>
      execFile('promtool', ['check', 'config', file], (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }),
      ),
    );
    expect(check.code, check.output).to.equal(0);
    expect(check.output).to.match(/SUCCESS/);
  });

  it('refuses to start a second time on the same ports, with a clear message', async () => {
    const second = await runSfToExit(upArgs(), env);
    expect(second.code).to.equal(1);
    expect(second.output).to.match(/port \d+ \(control API\) is already taken/);
  });

  it('stops everything on SIGTERM', async () => {
    const exited = new Promise<number | null>((r) => up!.child.once('exit', (code) => r(code)));
    up!.child.kill('SIGTERM');
    expect(await exited).to.equal(0);
    // It says it heard the signal, and when everything has stopped.
    expect(up!.output()).to.match(/sf up: stopping \(SIGTERM\)/);
    expect(up!.output()).to.match(/sf up: stopped after \d+\.\d s; services and their data are kept in /);
    for (const port of [ports.control, ports.admin, ports.redis]) {
      const server: Server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => server.close(() => resolve()));
      });
    }
  });
});
