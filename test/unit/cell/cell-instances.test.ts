import { expect } from 'chai';
import { CellInstances } from '../../../cell/cell-instances';
import type { ActualInstance, InstanceSpec } from '../../../protocol/cell-protocol';
import type { Engine } from '../../../cell/engine';
import type { EngineRegistry } from '../../../cell/engine-registry';
import { ErrorCode } from '../../../common/errors';
import type { ExitListener, Executor, InstanceHandle, InstanceStatus } from '../../../cell/executor';
import { admitStart } from '../../../cell/instance-volume';
import { spec, tempCellDir } from '../../helpers/cell-harness';
import { keyLayout } from '../../../protocol/keys';

/** An executor that runs nothing: it records calls and lets the test make instances exit. */
class FakeExecutor implements Executor {
  readonly kind = 'process' as const;
  readonly calls: string[] = [];
  private readonly running = new Map<string, InstanceHandle>();
  private readonly listeners = new Set<ExitListener>();
  private nextPid = 1000;

  constructor(private readonly dataDir: string) {}

  async available() {
    return { ok: true, reason: '' };
  }

  async start(s: InstanceSpec): Promise<InstanceHandle> {
    this.calls.push(`start ${s.instanceId} g${s.generation}`);
    const { paths } = await admitStart(this.dataDir, s, this.kind, 20000);
    const handle: InstanceHandle = {
      instanceId: s.instanceId,
      executor: this.kind,
      pid: this.nextPid++,
      port: 20000,
      host: '127.0.0.1',
      volumeDir: paths.volumeDir,
      dataDir: paths.dataDir,
      startedAt: Date.now(),
      adopted: false,
      context: {
        spec: s,
        dataDir: paths.dataDir,
        volumeDir: paths.volumeDir,
        port: 20000,
        listenHost: '127.0.0.1',
        advertiseHost: '127.0.0.1',
      },
    };
    this.running.set(s.instanceId, handle);
    return handle;
  }

  async stop(id: string): Promise<void> {
    this.calls.push(`stop ${id}`);
    this.exit(id, null);
  }

  async kill(id: string): Promise<void> {
    this.calls.push(`kill ${id}`);
    this.exit(id, 'SIGKILL');
  }

  /** Simulates the process ending (a crash when the cell did not ask for it). */
  exit(id: string, signal: string | null): void {
    const h = this.running.get(id);
    if (!h) return;
    this.running.delete(id);
    const status: InstanceStatus = { state: 'exited', pid: h.pid, exitCode: signal ? null : 1, signal };
    for (const l of this.listeners) l(id, status);
  }

  status(id: string): InstanceStatus {
    return this.running.has(id)
      ? { state: 'running', pid: 1, exitCode: null, signal: null }
      : { state: 'unknown', pid: null, exitCode: null, signal: null };
  }

  handle(id: string) {
    return this.running.get(id);
  }

  handles() {
    return [...this.running.values()];
  }

  async adopt(): Promise<InstanceHandle[]> {
    return [];
  }

  onExit(listener: ExitListener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

/** Makes every start wait until the returned function is called. */
function holdStarts(executor: FakeExecutor): () => void {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const realStart = executor.start.bind(executor);
  executor.start = async (s) => {
    await gate;
    return realStart(s);
  };
  return release;
}

const fakeEngine: Engine = {
  kind: 'redis',
  available: async () => ({ ok: true, reason: '' }),
  runAs: () => undefined,
  prepare: async () => undefined,
  launch: async () => ({ file: 'x', args: [], stopSignal: 'SIGTERM' }),
  healthy: async () => true,
  position: async () => ({ role: 'primary', position: '7', value: '7' }),
  promote: async () => undefined,
  repoint: async () => undefined,
};

describe('CellInstances', () => {
  let cell: { dir: string; remove(): Promise<void> };
  let executor: FakeExecutor;
  let instances: CellInstances;
  let reports: Map<string, ActualInstance | null>;

  beforeEach(async () => {
    cell = await tempCellDir();
    executor = new FakeExecutor(cell.dir);
    reports = new Map();
    instances = new CellInstances({
      cell: 'c',
      dataDir: cell.dir,
      advertiseHost: '127.0.0.1',
      executors: { process: executor },
      engines: { redis: fakeEngine, postgres: fakeEngine, tcp: fakeEngine } as EngineRegistry,
      redis: undefined,
      keys: keyLayout(),
      report: (id, a) => reports.set(id, a),
    });
  });

  afterEach(() => cell.remove());

  const desired = (...specs: InstanceSpec[]): Map<string, InstanceSpec> => new Map(specs.map((s) => [s.instanceId, s]));

  describe('commit verdict of a new primary', () => {
    /** An engine whose commit checks wait until the test answers them. */
    function gatedEngine(): { engine: Engine; answer: (verdict: string | null) => void; checks: () => number } {
      const pending: Array<(v: string | null) => void> = [];
      let count = 0;
      const engine: Engine = {
        ...fakeEngine,
        position: async (ctx) =>
          ctx.spec.role === 'primary'
            ? { role: 'primary', position: '7', value: '7' }
            : { role: 'replica', position: '7', value: '7' },
        checkCommit: () => {
          count++;
          return new Promise((resolve) => pending.push(resolve));
        },
      };
      return { engine, answer: (v) => pending.splice(0).forEach((r) => r(v)), checks: () => count };
    }

    function withEngine(engine: Engine): CellInstances {
      return new CellInstances({
        cell: 'c',
        dataDir: cell.dir,
        advertiseHost: '127.0.0.1',
        executors: { process: executor },
        engines: { redis: engine, postgres: engine, tcp: engine } as EngineRegistry,
        redis: undefined,
        keys: keyLayout(),
        report: (id, a) => reports.set(id, a),
      });
    }

    it('reports a promoted replica unable to commit until its first commit check passes', async () => {
      const gated = gatedEngine();
      const cells = withEngine(gated.engine);
      await cells.reconcile(
        desired(spec({ instanceId: 'r', engine: 'postgres', role: 'replica', replicaOf: { host: 'h', port: 1 } })),
      );
      expect(reports.get('r')).to.include({ state: 'running', role: 'replica', degraded: null });
      cells.update('r', { role: 'primary', epoch: 2, replicaOf: undefined });
      // With sync durability it has no standby yet: no verdict must not read as "commits".
      expect(reports.get('r')?.degraded).to.match(/no write has committed/);
      expect(gated.checks()).to.equal(1);
      gated.answer(null);
      await new Promise((r) => setImmediate(r));
      expect(reports.get('r')).to.include({ role: 'primary', degraded: null });
    });

    it('reports a starting primary unable to commit until its first commit check passes', async () => {
      const gated = gatedEngine();
      const cells = withEngine(gated.engine);
      await cells.reconcile(desired(spec({ instanceId: 'p', engine: 'postgres' })));
      expect(reports.get('p')?.degraded).to.match(/no write has committed/);
      gated.answer('no synchronous standby connected');
      await new Promise((r) => setImmediate(r));
      expect(reports.get('p')?.degraded).to.equal('no synchronous standby connected');
    });
  });

  describe('credentials', () => {
    const older = {
      version: 3,
      admin: { username: 'sf_admin', password: 'admin-password-older-0123' },
      replication: { username: 'sf_replication', password: 'replication-password-0123' },
      users: [],
    };

    it('gives credentials from before monitoring users one derived from the admin password, the same on every cell', async () => {
      const applied: Array<string | undefined> = [];
      const engine: Engine = {
        ...fakeEngine,
        applyCredentials: async (ctx) => {
          applied.push(ctx.spec.credentials?.monitoring?.username);
        },
      };
      const one = new CellInstances({
        cell: 'c',
        dataDir: cell.dir,
        advertiseHost: '127.0.0.1',
        executors: { process: executor },
        engines: { redis: engine, postgres: engine, tcp: engine } as EngineRegistry,
        redis: undefined,
        keys: keyLayout(),
        report: (id, a) => reports.set(id, a),
      });
      await one.reconcile(desired(spec({ instanceId: 'i', engine: 'redis', credentials: older })));
      expect(applied).to.deep.equal(['sf_monitor']);
      const started = executor.handle('i')!.context.spec.credentials!;
      expect(started.monitoring?.username).to.equal('sf_monitor');
      expect(started.monitoring?.password).to.have.length.greaterThan(20);
      expect(started.monitoring?.password).to.not.equal(older.admin.password);
      // Idempotent: the same set is not applied again, and another cell derives the same user.
      await one.reconcile(desired(spec({ instanceId: 'i', engine: 'redis', credentials: older })));
      expect(applied).to.have.length(1);
      const other = await tempCellDir();
      try {
        const otherExecutor = new FakeExecutor(other.dir);
        const two = new CellInstances({
          cell: 'c2',
          dataDir: other.dir,
          advertiseHost: '127.0.0.1',
          executors: { process: otherExecutor },
          engines: { redis: engine, postgres: engine, tcp: engine } as EngineRegistry,
          redis: undefined,
          keys: keyLayout(),
          report: () => undefined,
        });
        await two.reconcile(desired(spec({ instanceId: 'j', engine: 'redis', credentials: older })));
        expect(otherExecutor.handle('j')!.context.spec.credentials!.monitoring).to.deep.equal(started.monitoring);
      } finally {
        await other.remove();
      }
    });

    it('applies the credentials of an adopted instance once and starts the sidecars they allow', async () => {
      const applied: number[] = [];
      const engine: Engine = {
        ...fakeEngine,
        applyCredentials: async (ctx) => {
          applied.push(ctx.spec.credentials?.version ?? -1);
        },
      };
      const s = spec({ instanceId: 'i', engine: 'redis', credentials: older, sidecars: ['redis-exporter'] });
      await executor.start(s);
      const ensured: string[] = [];
      executor.adopt = async () => [executor.handle('i')!];
      const fake = executor as FakeExecutor & { ensureSidecars(id: string): Promise<InstanceHandle['sidecars']> };
      fake.ensureSidecars = async (id) => {
        ensured.push(id);
        return [{ kind: 'redis-exporter', port: 20001, pid: 4242 }];
      };
      const cells = new CellInstances({
        cell: 'c',
        dataDir: cell.dir,
        advertiseHost: '127.0.0.1',
        executors: { process: executor },
        engines: { redis: engine, postgres: engine, tcp: engine } as EngineRegistry,
        redis: undefined,
        keys: keyLayout(),
        report: (id, a) => reports.set(id, a),
      });
      await cells.load();
      await cells.reconcile(desired(s));
      await cells.reconcile(desired(s));
      expect(applied).to.deep.equal([3]);
      expect(ensured).to.deep.equal(['i']);
      expect(reports.get('i')?.sidecars).to.deep.equal([{ kind: 'redis-exporter', port: 20001, pid: 4242 }]);
    });
  });

  describe('reconcile', () => {
    it('starts a new instance once and reports it running with its position', async () => {
      const s = spec({ instanceId: 'i', engine: 'redis' });
      await instances.reconcile(desired(s));
      await instances.reconcile(desired(s));
      expect(executor.calls).to.deep.equal(['start i g0']);
      expect(reports.get('i')).to.include({
        state: 'running',
        port: 20000,
        position: '7',
        positionValue: '7',
        generation: 0,
      });
    });

    it('reports a crash as failed and restarts only for a higher generation', async () => {
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      executor.exit('i', null);
      expect(reports.get('i')?.state).to.equal('failed');
      expect(reports.get('i')?.lastError?.code).to.equal(ErrorCode.InstanceExited);
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      expect(executor.calls).to.deep.equal(['start i g0']);
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis', generation: 1 })));
      expect(executor.calls).to.deep.equal(['start i g0', 'start i g1']);
      expect(reports.get('i')).to.include({ state: 'running', generation: 1 });
    });

    it('restarts a running instance when the generation rises', async () => {
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis', generation: 1 })));
      expect(executor.calls).to.deep.equal(['start i g0', 'stop i', 'start i g1']);
      expect(reports.get('i')?.state).to.equal('running');
    });

    it('changes no role of a running instance from desired state, but records a higher epoch', async () => {
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis', epoch: 1 })));
      await instances.reconcile(
        desired(
          spec({ instanceId: 'i', engine: 'redis', epoch: 4, role: 'replica', replicaOf: { host: 'h', port: 1 } }),
        ),
      );
      expect(executor.calls).to.deep.equal(['start i g0']);
      expect(reports.get('i')).to.include({ role: 'primary', epoch: 4 });
      expect(await instances.recordedEpoch('i')).to.equal(4);
    });

    it('stops an instance removed from desired state, keeps its volume, and starts it when re-added', async () => {
      const s = spec({ instanceId: 'i', engine: 'redis' });
      await instances.reconcile(desired(s));
      await instances.reconcile(desired());
      expect(reports.get('i')).to.include({ state: 'stopped', volumePresent: true });
      expect(() => instances.requireStopped('i')).not.to.throw();
      await instances.reconcile(desired(s));
      expect(executor.calls).to.deep.equal(['start i g0', 'stop i', 'start i g0']);
    });
  });

  describe('fence', () => {
    it('kills, reports fenced rather than failed, and is idempotent', async () => {
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      expect(await instances.fence('i')).to.equal(true);
      expect(reports.get('i')?.state).to.equal('fenced');
      expect(await instances.fence('i')).to.equal(false);
      expect(reports.get('i')?.lastError).to.equal(null);
    });
  });

  describe('fence while starting', () => {
    it('keeps an instance down that was fenced before its start finished', async () => {
      const release = holdStarts(executor);
      const reconciling = instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      await new Promise((r) => setTimeout(r, 10));
      expect(reports.get('i')?.state).to.equal('starting');
      await instances.fence('i');
      release();
      await reconciling;
      expect(reports.get('i')?.state).to.equal('fenced');
      expect(executor.handles()).to.deep.equal([]);
      expect(executor.calls).to.deep.equal(['kill i', 'start i g0', 'kill i']);
    });
  });

  describe('removal while starting', () => {
    it('stops an instance removed from desired state before its start finished', async () => {
      const release = holdStarts(executor);
      const first = instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      await new Promise((r) => setTimeout(r, 10));
      await instances.reconcile(desired());
      release();
      await first;
      expect(reports.get('i')?.state).to.equal('stopped');
      expect(executor.calls).to.deep.equal(['start i g0', 'stop i']);
    });
  });

  describe('load', () => {
    it('reports volumes found on disk: failed when meant to run, so control decides', async () => {
      await instances.reconcile(desired(spec({ instanceId: 'i', engine: 'redis' })));
      const reborn = new CellInstances({
        cell: 'c',
        dataDir: cell.dir,
        advertiseHost: '127.0.0.1',
        executors: { process: new FakeExecutor(cell.dir) },
        engines: { redis: fakeEngine, postgres: fakeEngine, tcp: fakeEngine } as EngineRegistry,
        redis: undefined,
        keys: keyLayout(),
        report: (id, a) => reports.set(id, a),
      });
      await reborn.load();
      expect(reports.get('i')).to.include({ state: 'failed', volumePresent: true });
      expect(reborn.usedMb()).to.equal(64);
    });
  });
});
