import { expect } from 'chai';
import pino from 'pino';
import { ConvergenceLoop } from '../../../control/convergence/convergence-loop';
import type { LeaderElector } from '../../../control/leader/leader-elector';
import type { LeaderFence } from '../../../control/leader/fenced-commit';
import type { CellDirectory, CellSnapshot } from '../../../control/services/cell-directory';
import type { ServiceSnapshot, ServiceStore } from '../../../control/services/service-store';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { ServiceReconciler } from '../../../control/convergence/service-reconciler';
import { keyLayout, type ActualInstance, type CellRecord } from '../../../protocol';

const FENCE: LeaderFence = { lockKey: 'l', tokenKey: 't', holder: 'me|1', token: 1 };

/** A loop over fakes: `reconciled` lists every reconcile in order; each takes `reconcileMs`. */
function fixture(names: string[], options: { reconcileMs?: number; passBudgetMs?: number } = {}) {
  const services = new Map<string, ServiceRecord>();
  // Records with no instances are never "settled", so every pass has work for each of them.
  for (const name of names) services.set(name, { name, status: 'creating', instances: [] } as unknown as ServiceRecord);
  const reconciled: string[] = [];
  const elector = { current: () => FENCE, tick: async () => undefined, resign: async () => undefined };
  const store = {
    keys: keyLayout(),
    noteChanged: () => undefined,
    snapshot: async () => ({ version: 1, services }),
  };
  const cells = new Map<string, CellSnapshot>();
  const directory = { snapshot: async () => cells, view: async () => cells, markDirty: () => undefined };
  const reconciler = {
    reconcile: async (name: string) => {
      reconciled.push(name);
      await new Promise((r) => setTimeout(r, options.reconcileMs ?? 0));
    },
  };
  const loop = new ConvergenceLoop(
    elector as unknown as LeaderElector,
    store as unknown as ServiceStore,
    directory as unknown as CellDirectory,
    reconciler as unknown as ServiceReconciler,
    { redisUrl: 'redis://unused', logger: pino({ level: 'silent' }), passBudgetMs: options.passBudgetMs },
  );
  return { loop, reconciled, services };
}

/** Running services, each on its own cell, and a store that names what changed between snapshots. */
function incrementalFixture(options: { resyncMs?: number; recheckMs?: number } = {}) {
  const record = (name: string, cell: string): ServiceRecord =>
    ({
      name,
      status: 'running',
      instances: [{ id: `${name}-0`, cell, role: 'primary', specWritten: true, generation: 0 }],
    }) as unknown as ServiceRecord;
  const report = (id: string, healthy: boolean): ActualInstance =>
    ({ instanceId: id, state: 'running', generation: 0, healthy, leaseHeld: null }) as unknown as ActualInstance;
  const cellOf = (name: string, actual: Map<string, ActualInstance>): CellSnapshot => ({
    name,
    alive: true,
    record: { heartbeatTtlMs: 3_000 } as unknown as CellRecord,
    actual,
  });
  const cells = new Map<string, CellSnapshot>([
    ['c1', cellOf('c1', new Map([['a-0', report('a-0', true)]]))],
    ['c2', cellOf('c2', new Map([['b-0', report('b-0', true)]]))],
  ]);
  let snapshot: ServiceSnapshot = {
    version: 1,
    services: new Map([
      ['a', record('a', 'c1')],
      ['b', record('b', 'c2')],
    ]),
  };
  const changes = new Map<ServiceSnapshot, Set<string>>();
  const store = {
    keys: keyLayout(),
    noteChanged: () => undefined,
    snapshot: async () => snapshot,
    changedBetween: (older: ServiceSnapshot, newer: ServiceSnapshot) =>
      older === newer ? new Set<string>() : (changes.get(newer) ?? null),
  };
  const reconciled: string[] = [];
  /** How each pass read the cells: `snapshot` (everything), `view share` (a share again), `view`. */
  const reads: string[] = [];
  /** Deleting services whose tearDown finds nothing to do (waiting for their cells). */
  const idleDeletes = new Set<string>();
  /** Every placeNew call's names; it decides those `placeable` names (all when unset). */
  const batches: string[][] = [];
  let placeable: ((name: string) => boolean) | null = null;
  /** Every runReady call's names; it decides those `runnable` names (all when unset). */
  const runs: string[][] = [];
  let runnable: ((name: string) => boolean) | null = null;
  /** Every call to the reconciler, in order: `reconcile x`, `place x,y`, `run x,y`, `recheck x,y`. */
  const calls: string[] = [];
  /** The recheck finds these fine (all when unset). */
  let fine: ((name: string) => boolean) | null = null;
  /** The confirmation of settled-looking services finds these as they should be (all when unset). */
  let confirmable: ((name: string) => boolean) | null = null;
  const reconciler = {
    reconcile: async (name: string) => {
      calls.push(`reconcile ${name}`);
      reconciled.push(name);
    },
    placeNew: async (names: readonly string[]) => {
      calls.push(`place ${names.join(',')}`);
      batches.push([...names]);
      return new Set(names.filter((n) => placeable?.(n) ?? true));
    },
    recheck: async (records: readonly ServiceRecord[]) => {
      calls.push(`recheck ${records.map((r) => r.name).join(',')}`);
      return new Set(records.map((r) => r.name).filter((n) => fine?.(n) ?? true));
    },
    confirm: async (records: readonly ServiceRecord[]) => {
      calls.push(`confirm ${records.map((r) => r.name).join(',')}`);
      return new Set(records.map((r) => r.name).filter((n) => confirmable?.(n) ?? true));
    },
    tearDown: async (names: readonly string[]) => {
      calls.push(`delete ${names.join(',')}`);
      const decided = new Set(names.filter((n) => snapshot.services.get(n)?.status === 'deleting'));
      return { decided, idle: new Set([...decided].filter((n) => idleDeletes.has(n))) };
    },
    runReady: async (names: readonly string[]) => {
      calls.push(`run ${names.join(',')}`);
      runs.push([...names]);
      return new Set(names.filter((n) => runnable?.(n) ?? true));
    },
  };
  const loop = new ConvergenceLoop(
    { current: () => FENCE, tick: async () => undefined, resign: async () => undefined } as unknown as LeaderElector,
    store as unknown as ServiceStore,
    {
      snapshot: async () => {
        reads.push('snapshot');
        return cells;
      },
      view: async (share = 0) => {
        reads.push(share > 0 ? 'view share' : 'view');
        return cells;
      },
      markDirty: () => undefined,
    } as unknown as CellDirectory,
    reconciler as unknown as ServiceReconciler,
    { redisUrl: 'redis://unused', logger: pino({ level: 'silent' }), ...options },
  );
  /** A new snapshot where `name` has `record` (a new object), and the store says so. */
  const put = (name: string, record: ServiceRecord): void => {
    const services = new Map(snapshot.services);
    services.set(name, record);
    snapshot = { version: snapshot.version + 1, services };
    changes.set(snapshot, new Set([name]));
  };
  /** A new snapshot where `name`'s record is replaced, and the store says so. */
  const rewrite = (name: string): void => {
    const services = new Map(snapshot.services);
    services.set(name, { ...services.get(name)! });
    snapshot = { version: snapshot.version + 1, services };
    changes.set(snapshot, new Set([name]));
  };
  const report2 = (cell: string, id: string, healthy: boolean): void => {
    cells.set(cell, cellOf(cell, new Map([[id, report(id, healthy)]])));
  };
  const decideOnly = (f: (name: string) => boolean): void => {
    placeable = f;
  };
  const runOnly = (f: (name: string) => boolean): void => {
    runnable = f;
  };
  const fineOnly = (f: (name: string) => boolean): void => {
    fine = f;
  };
  const confirmOnly = (f: (name: string) => boolean): void => {
    confirmable = f;
  };
  return {
    loop,
    reconciled,
    rewrite,
    report: report2,
    put,
    batches,
    decideOnly,
    runs,
    runOnly,
    fineOnly,
    confirmOnly,
    idleDeletes,
    reads,
    calls,
    cellOf,
    reportOf: report,
    cells,
  };
}

describe('ConvergenceLoop', () => {
  describe('pass (between resyncs)', () => {
    it('reconciles only the services whose record, cell or reports changed', async () => {
      const { loop, reconciled, rewrite, report, calls } = incrementalFixture();
      await loop.pass();
      // The term's first look at two services that seem settled: one confirmation for both.
      expect(calls).to.deep.equal(['confirm a,b']);
      reconciled.length = 0;
      await loop.pass();
      expect(reconciled).to.deep.equal([]);
      report('c1', 'a-0', false);
      await loop.pass();
      expect(reconciled).to.deep.equal(['a']);
      reconciled.length = 0;
      rewrite('b');
      await loop.pass();
      // a is unhealthy, so not settled: reconciled at every pass until it is.
      expect(reconciled).to.have.members(['a', 'b']);
      reconciled.length = 0;
      report('c1', 'a-0', true);
      await loop.pass();
      expect(reconciled).to.deep.equal(['a']);
      reconciled.length = 0;
      await loop.pass();
      expect(reconciled).to.deep.equal([]);
    });
  });

  describe('new services and services waiting for their first reports', () => {
    const pending = (name: string): ServiceRecord =>
      ({ name, status: 'pending', replicas: 0, instances: [] }) as unknown as ServiceRecord;
    const starting = (name: string, cell: string): ServiceRecord =>
      ({
        name,
        status: 'starting',
        message: null,
        replicas: 0,
        instances: [{ id: `${name}-0`, cell, role: 'primary', specWritten: true, generation: 0 }],
      }) as unknown as ServiceRecord;

    it('places new services in one batch instead of one reconcile each; one the batch did not decide is reconciled', async () => {
      const { loop, reconciled, put, batches, decideOnly } = incrementalFixture();
      await loop.pass();
      reconciled.length = 0;
      for (const name of ['n1', 'n2', 'n3']) {
        put(name, pending(name));
        loop.serviceChanged(`0 ${name}`);
      }
      decideOnly((name) => name !== 'n2');
      await loop.pass();
      expect(batches).to.deep.equal([['n1', 'n2', 'n3']]);
      expect(reconciled).to.deep.equal([]);
      // n2 was no longer new when the batch read it (placed meanwhile): the next pass reconciles it alone.
      for (const name of ['n1', 'n2', 'n3']) put(name, starting(name, 'c2'));
      batches.length = 0;
      await loop.pass();
      expect(batches).to.deep.equal([]);
      expect(reconciled).to.include('n2');
    });

    it('reconciles a service waiting for its first report once, then not again until the report comes', async () => {
      const { loop, reconciled, put, cells, cellOf, reportOf } = incrementalFixture();
      await loop.pass();
      reconciled.length = 0;
      put('w', starting('w', 'c1'));
      await loop.pass();
      expect(reconciled).to.deep.equal(['w']);
      reconciled.length = 0;
      await loop.pass();
      await loop.pass();
      expect(reconciled).to.deep.equal([]);
      // Its cell reports it: reconciled again (it is not settled until its record says running).
      // Not running yet: a report of it running goes to a batch instead (below).
      const c1 = cells.get('c1')!;
      const report = { ...reportOf('w-0', true), state: 'starting' } as ActualInstance;
      cells.set('c1', cellOf('c1', new Map([...c1.actual, ['w-0', report]])));
      await loop.pass();
      expect(reconciled).to.deep.equal(['w']);
      reconciled.length = 0;
      await loop.pass();
      expect(reconciled).to.deep.equal(['w']);
    });

    it('keeps reconciling a starting service with a report at every pass', async () => {
      const { loop, reconciled, put, cells, cellOf, reportOf } = incrementalFixture();
      put('w', starting('w', 'c1'));
      const c1 = cells.get('c1')!;
      // Reported but not running yet (a running one is marked running by a batch, below).
      const report = { ...reportOf('w-0', true), state: 'starting' } as ActualInstance;
      cells.set('c1', cellOf('c1', new Map([...c1.actual, ['w-0', report]])));
      await loop.pass();
      reconciled.length = 0;
      await loop.pass();
      await loop.pass();
      expect(reconciled).to.deep.equal(['w', 'w']);
    });
  });

  describe('starting services whose instances all run', () => {
    const starting = (name: string, cell: string): ServiceRecord =>
      ({
        name,
        status: 'starting',
        message: null,
        replicas: 0,
        instances: [{ id: `${name}-0`, cell, role: 'primary', specWritten: true, generation: 0 }],
      }) as unknown as ServiceRecord;

    /** `names` starting, each on its own cell that reports its instance running. */
    function startedFixture(names: string[]) {
      const f = incrementalFixture();
      for (const name of names) {
        f.cells.set(`c-${name}`, f.cellOf(`c-${name}`, new Map([[`${name}-0`, f.reportOf(`${name}-0`, true)]])));
        f.put(name, starting(name, `c-${name}`));
      }
      return f;
    }

    it('marks them running in one batch instead of one reconcile each', async () => {
      const f = startedFixture(['r1', 'r2', 'r3']);
      await f.loop.pass();
      expect(f.runs).to.deep.equal([['r1', 'r2', 'r3']]);
      expect(f.reconciled.filter((n) => n.startsWith('r'))).to.deep.equal([]);
    });

    it('reconciles one the batch did not decide alone from then on, even while it still looks ready', async () => {
      const f = startedFixture(['r1', 'r2', 'r3']);
      f.runOnly((name) => name !== 'r2');
      await f.loop.pass();
      expect(f.runs).to.deep.equal([['r1', 'r2', 'r3']]);
      f.runs.length = 0;
      f.reconciled.length = 0;
      f.runOnly(() => true);
      // The fake changes no record: r1 and r3 are still starting, and batched again; r2 is not.
      await f.loop.pass();
      await f.loop.pass();
      expect(f.reconciled).to.deep.equal(['r2', 'r2']);
      expect(f.runs.flat()).to.not.include('r2');
      expect(f.runs.flat()).to.include.members(['r1', 'r3']);
    });

    it('puts a batch where its first member stands: established services still go first every other pass', async () => {
      const f = startedFixture(['r1', 'r2']);
      await f.loop.pass();
      const orders: string[][] = [];
      for (const healthy of [false, true]) {
        // The batch's members are named by messages (first in the order found); a's report changed.
        f.report('c1', 'a-0', healthy);
        f.loop.serviceChanged('0 r1');
        f.loop.serviceChanged('0 r2');
        f.calls.length = 0;
        await f.loop.pass();
        orders.push(f.calls.filter((c) => c === 'reconcile a' || c.startsWith('run ')));
      }
      expect(orders).to.have.deep.members([
        ['reconcile a', 'run r1,r2'],
        ['run r1,r2', 'reconcile a'],
      ]);
    });
  });

  describe('the resync', () => {
    it('reads a share of the cells again at every pass instead of everything at once, and looks only at what changed', async () => {
      const f = incrementalFixture({ resyncMs: 10 });
      await f.loop.pass();
      expect(f.reads).to.deep.equal(['snapshot']);
      f.calls.length = 0;
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 15));
        await f.loop.pass();
      }
      expect(f.reads.slice(1)).to.deep.equal(['view share', 'view share', 'view share']);
      expect(f.calls).to.deep.equal([]);
    });
  });

  describe('a new term', () => {
    it('confirms the services that seem settled in one batch instead of one reconcile each; one not confirmed is reconciled alone', async () => {
      const f = incrementalFixture();
      f.confirmOnly((name) => name !== 'b');
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['confirm a,b']);
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['reconcile b']);
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.deep.equal([]);
      // Past the term's first look, a changed report is reconciled, as before.
      f.report('c1', 'a-0', false);
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['reconcile a']);
    });
  });

  describe('deleting services', () => {
    const deleting = (name: string): ServiceRecord =>
      ({
        name,
        status: 'deleting',
        message: null,
        replicas: 0,
        instances: [{ id: `${name}-0`, cell: 'c3', role: 'primary', specWritten: false, generation: 0 }],
      }) as unknown as ServiceRecord;

    it('tears them down in one batch instead of one reconcile each; one waiting for its cells is left alone until its inputs change', async () => {
      const f = incrementalFixture();
      f.cells.set('c3', f.cellOf('c3', new Map()));
      await f.loop.pass();
      for (const name of ['d1', 'd2', 'd3']) {
        f.put(name, deleting(name));
        f.loop.serviceChanged(`0 ${name}`);
      }
      f.idleDeletes.add('d2');
      f.idleDeletes.add('d3');
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['delete d1,d2,d3']);
      // The fake writes nothing: d1 (whose step wrote) is torn down again; d2 and d3 wait.
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['delete d1']);
      // The cell reports d2 (it stopped): looked at again; d3 still waits.
      f.cells.set('c3', f.cellOf('c3', new Map([['d2-0', { ...f.reportOf('d2-0', true), state: 'stopped' }]])));
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.have.length(1);
      expect(f.calls[0]!.split(' ')[1]!.split(',')).to.have.members(['d1', 'd2']);
    });

    it('looks at one waiting for its cells again at every resync (its wait has a time limit no input shows)', async () => {
      const f = incrementalFixture({ resyncMs: 0 });
      f.cells.set('c3', f.cellOf('c3', new Map()));
      f.put('d1', deleting('d1'));
      f.idleDeletes.add('d1');
      await f.loop.pass();
      f.calls.length = 0;
      await f.loop.pass();
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['delete d1', 'delete d1']);
    });
  });

  describe('the recheck round', () => {
    it('looks at the settled services it owes in one batch and leaves them settled', async () => {
      // Every pass a full one, and a new round at each: the round owes every settled service.
      const f = incrementalFixture({ resyncMs: 0, recheckMs: 0 });
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['confirm a,b']);
      f.calls.length = 0;
      await f.loop.pass();
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['recheck a,b', 'recheck a,b']);
    });

    it('reconciles one whose route the recheck did not find as it should be, on its own', async () => {
      const f = incrementalFixture({ resyncMs: 0, recheckMs: 0 });
      await f.loop.pass();
      f.fineOnly((name) => name !== 'b');
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['recheck a,b']);
      f.fineOnly(() => true);
      f.calls.length = 0;
      await f.loop.pass();
      expect(f.calls).to.deep.equal(['reconcile b', 'recheck a']);
    });
  });

  describe('pass', () => {
    it('reconciles a service named by a change message before every other', async () => {
      const { loop, reconciled, services } = fixture(['a', 'b', 'c', 'd']);
      await loop.pass();
      reconciled.length = 0;
      services.set('new', { name: 'new', status: 'creating', instances: [] } as unknown as ServiceRecord);
      loop.serviceChanged('2 new');
      await loop.pass();
      expect(reconciled[0]).to.equal('new');
      expect(reconciled).to.have.members(['new', 'a', 'b', 'c', 'd']);
    });

    it('starts no reconcile past its budget, and the next passes finish the work', async () => {
      const names = Array.from({ length: 8 }, (_, i) => `s${i}`);
      const { loop, reconciled } = fixture(names, { reconcileMs: 20, passBudgetMs: 30 });
      await loop.pass();
      // Each reconcile takes at least 20 ms, so the budget stops the pass after the second.
      expect(reconciled.length).to.be.within(1, 2);
      for (let i = 0; i < 8 && reconciled.length < names.length; i++) await loop.pass();
      expect(new Set(reconciled)).to.deep.equal(new Set(names));
    });

    it('reaches every service while bursts of new ones, named by messages, take whole passes', async () => {
      const names = Array.from({ length: 6 }, (_, i) => `s${i}`);
      const { loop, reconciled, services } = fixture(names, { reconcileMs: 20, passBudgetMs: 30 });
      let version = 2;
      for (let i = 0; i < 20 && !names.every((n) => reconciled.includes(n)); i++) {
        // Every other pass three creates land first: more than its budget, so it is cut among them.
        if (i % 2 === 0)
          for (let k = 0; k < 3; k++) {
            const name = `new${i}-${k}`;
            services.set(name, { name, status: 'creating', instances: [] } as unknown as ServiceRecord);
            loop.serviceChanged(`${version++} ${name}`);
          }
        await loop.pass();
      }
      expect(names.filter((n) => !reconciled.includes(n))).to.deep.equal([]);
    });

    it('still reconciles one service in a pass whose reads alone spent the budget', async () => {
      const { loop, reconciled } = fixture(['only'], { passBudgetMs: 0 });
      await loop.pass();
      expect(reconciled).to.deep.equal(['only']);
    });
  });
});
