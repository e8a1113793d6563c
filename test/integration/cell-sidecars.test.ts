/**
 * Pods: an instance's sidecars (Debian's Prometheus exporters) on both executors, with real
 * engines. Each instance's exporter answers `/metrics` with its engine's metrics, reaches the
 * engine with the platform's credentials without them ever being in argv, ends with the
 * instance, and is adopted again by a restarted cell.
 */
import { readFile } from 'node:fs/promises';
import { expect } from 'chai';
import type { InstanceCredentials } from '../../protocol/cell-protocol';
import { DockerApi } from '../../cell/docker-api';
import { DockerExecutor } from '../../cell/executor-docker';
import type { Executor, InstanceHandle } from '../../cell/executor';
import { ProcessExecutor } from '../../cell/executor-process';
import { findBinary } from '../../cell/run-command';
import { eventually, spec, tempCellDir } from '../helpers/cell-harness';
import { releaseDockerDaemon, useDockerDaemon } from '../helpers/docker-daemon';

const CREDS: InstanceCredentials = {
  version: 1,
  admin: { username: 'sf_admin', password: 'admin-password-sidecar-0123' },
  replication: { username: 'sf_replication', password: 'replication-password-0123' },
  users: [],
};

async function metrics(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
  expect(res.status).to.equal(200);
  return res.text();
}

async function answers(port: number): Promise<boolean> {
  return fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2_000) }).then(
    () => true,
    () => false,
  );
}

function sidecarOf(handle: InstanceHandle): { port: number; pid: number | null } {
  expect(handle.sidecars, `sidecars of ${handle.instanceId}`).to.have.length(1);
  return (handle.sidecars ?? [])[0];
}

interface Suite {
  name: string;
  /** Null when the executor cannot run here (the suite skips, saying why). */
  setUp(): Promise<string | null>;
  tearDown(): Promise<void>;
  make(dataDir: string, portRange: { from: number; to: number }): Executor;
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
        // The password reaches the exporter in its environment, never in its command line.
        if (sidecar.pid) {
          const cmdline = await readFile(`/proc/${sidecar.pid}/cmdline`, 'utf8');
          expect(cmdline).to.not.contain(CREDS.admin.password);
        }
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
        if (sidecar.pid) {
          const cmdline = await readFile(`/proc/${sidecar.pid}/cmdline`, 'utf8');
          expect(cmdline).to.not.contain(CREDS.admin.password);
        }
      }
      // A standby is reported as one: the exporter reads the engine it sits beside.
      expect(await metrics(sidecarOf(replica).port)).to.match(/^pg_static\{.*\} 1$/m);
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
  make: (dataDir, portRange) => new ProcessExecutor({ dataDir, portRange }),
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
  make: (dataDir, portRange) => new DockerExecutor({ dataDir, portRange, docker: { socketPath } }),
});
