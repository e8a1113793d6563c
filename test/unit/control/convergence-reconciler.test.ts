/**
 * ServiceReconciler decisions with fakes (no Redis): what a pass writes when a cell is missing
 * during and after a new leader's grace, and on deletion. The orders and tombstones it queues are
 * read back from the ops of the change it commits.
 */
import { expect } from 'chai';
import { MOVE_TARGET_SILENCE_MS, ServiceReconciler } from '../../../control/convergence/service-reconciler';
import type { CellSnapshot } from '../../../control/services/cell-directory';
import type { FailoverCoordinator, PrimaryLoss } from '../../../control/services/failover-coordinator';
import type { RouteEmitter } from '../../../control/services/route-emitter';
import type { ServiceChange, ServiceSnapshot, ServiceStore } from '../../../control/services/service-store';
import type { InstanceRecord, ServiceRecord } from '../../../control/services/service-types';
import type { LeaderFence } from '../../../control/leader/fenced-commit';
import { ServiceUsage } from '../../../control/services/service-usage';
import type { ActualInstance } from '../../../protocol/cell-protocol';
import { keyLayout } from '../../../protocol/keys';

const keys = keyLayout('sf:');
const fence: LeaderFence = { lockKey: keys.leaderLock, tokenKey: keys.leaderToken, holder: 'h|9', token: 9 };

class FakeStore {
  readonly keys = keys;
  changes: ServiceChange[] = [];
  constructor(public rec: ServiceRecord | null) {}
  async get(): Promise<ServiceRecord | null> {
    return this.rec;
  }
  usageAt(s: ServiceSnapshot): ServiceUsage {
    return ServiceUsage.of(s.services.values());
  }
  async change<T>(
    _name: string,
    _fence: LeaderFence | null,
    decide: (
      c: ServiceRecord | null,
      s: ServiceSnapshot,
    ) => Promise<{ change: ServiceChange; result: T } | { done: T }>,
  ): Promise<T> {
    const services = new Map(this.rec ? [[this.rec.name, this.rec]] : []);
    const d = await decide(this.rec, { version: 1, services });
    if ('done' in d) return d.done;
    this.changes.push(d.change);
    this.rec = d.change.record;
    return d.result;
  }
}

class FakeCoordinator implements FailoverCoordinator {
  losses: PrimaryLoss[] = [];
  async primaryLost(loss: PrimaryLoss) {
    this.losses.push(loss);
    return { kind: 'handling' as const };
  }
}

const emitter = { sync: async () => undefined, removeMany: async () => new Set<string>(), isCurrent: async () => true };

function inst(id: string, cell: string, role: 'primary' | 'replica'): InstanceRecord {
  return { id, cell, zone: cell, role, epoch: 3, generation: 0, specWritten: true, placedAt: 0 };
}

function service(status: ServiceRecord['status'] = 'running'): ServiceRecord {
  return {
    name: 'cache',
    engine: 'redis',
    replicas: 1,
    durability: 'sync',
    volume: { sizeMb: 64 },
    fencing: { policy: 'auto' },
    routerGroup: 'default',
    routerGroupGuid: 'g',
    port: 16000,
    status,
    message: null,
    epoch: 3,
    instances: [inst('cache-0', 'c1', 'primary'), inst('cache-1', 'c2', 'replica')],
    nextIndex: 2,
    leaderToken: 1,
    createdAt: 0,
    updatedAt: 0,
  };
}

function actual(id: string, state: ActualInstance['state'], port: number): ActualInstance {
  return {
    instanceId: id,
    service: 'cache',
    engine: 'redis',
    executor: 'process',
    state,
    generation: 0,
    pid: 1,
    host: '127.0.0.1',
    port,
    role: id === 'cache-0' ? 'primary' : 'replica',
    epoch: 3,
    position: null,
    positionValue: null,
    healthy: true,
    leaseHeld: true,
    volumePresent: true,
    volumeSizeMb: 64,
    lastError: null,
    updatedAt: 0,
  } as ActualInstance;
}

function cells(alive: Record<string, boolean>): Map<string, CellSnapshot> {
  const out = new Map<string, CellSnapshot>();
  let port = 20000;
  for (const [name, isAlive] of Object.entries(alive)) {
    const record = isAlive
      ? {
          name,
          zone: name,
          capacityMb: 4096,
          usedMb: 0,
          host: '127.0.0.1',
          executors: ['process' as const],
          engines: ['redis' as const],
          portRange: { from: 20000, to: 20999 },
          instances: 0,
          startedAt: 0,
          heartbeatAt: 0,
          heartbeatTtlMs: 3000,
        }
      : null;
    const acts = new Map<string, ActualInstance>();
    if (name === 'c1') acts.set('cache-0', actual('cache-0', 'running', port++));
    if (name === 'c2') acts.set('cache-1', actual('cache-1', 'running', port++));
    out.set(name, { name, alive: isAlive, record, actual: acts });
  }
  return out;
}

function setup(rec: ServiceRecord) {
  const store = new FakeStore(rec);
  const coordinator = new FakeCoordinator();
  const reconciler = new ServiceReconciler(
    store as unknown as ServiceStore,
    emitter as unknown as RouteEmitter,
    coordinator,
    { replacedVolumeRetentionMs: 60_000 },
  );
  return { store, coordinator, reconciler };
}

const opsOf = (store: FakeStore) => store.changes.flatMap((c) => c.extraOps ?? []);
const deleteOrders = (store: FakeStore) =>
  opsOf(store).filter((op) => op.cmd === 'LPUSH_CAPPED' && op.value.includes('"delete-volume"'));
const tombstones = (store: FakeStore) =>
  opsOf(store).filter((op) => op.cmd === 'HSET' && op.key === keys.volumeTombstones);

describe('ServiceReconciler', () => {
  describe('reconcile during a new leader grace', () => {
    it('neither fails over a primary whose cell has not re-registered nor drops a replica', async () => {
      const { store, coordinator, reconciler } = setup(service());
      await reconciler.reconcile('cache', fence, cells({ c1: false, c2: false, c3: true }), { cellGrace: true });
      expect(coordinator.losses).to.deep.equal([]);
      expect(store.rec!.instances.map((i) => i.id)).to.deep.equal(['cache-0', 'cache-1']);
      expect(tombstones(store)).to.deep.equal([]);
      expect(deleteOrders(store)).to.deep.equal([]);
    });
  });

  describe('reconcile after the grace', () => {
    it('hands a primary on a dead cell to the coordinator as cell-dead', async () => {
      const { coordinator, reconciler } = setup(service());
      await reconciler.reconcile('cache', fence, cells({ c1: false, c2: true, c3: true }), { cellGrace: false });
      expect(coordinator.losses.map((l) => l.reason)).to.deep.equal(['cell-dead']);
    });

    it('replaces a replica on a dead cell and tombstones its volume for the retention, ordering no deletion', async () => {
      const { store, reconciler } = setup(service());
      const before = Date.now();
      await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
      const ids = store.rec!.instances.map((i) => `${i.id}@${i.cell}`);
      expect(ids).to.include('cache-0@c1');
      expect(ids).to.not.include('cache-1@c2');
      expect(ids).to.include('cache-2@c3');
      expect(deleteOrders(store)).to.deep.equal([]);
      const [op] = tombstones(store);
      expect(op).to.include({ field: 'c2/cache-1' });
      const tomb = JSON.parse((op as { value: string }).value) as { reason: string; deleteAfter: number };
      expect(tomb.reason).to.equal('replaced');
      expect(tomb.deleteAfter).to.be.at.least(before + 60_000);
    });
  });

  describe("a move's replica on a cell that looks dead", () => {
    const moving = (): ServiceRecord => {
      const rec = service();
      rec.replicas = 0;
      rec.instances = [inst('cache-0', 'c1', 'primary'), { ...inst('cache-1', 'c2', 'replica'), moveOf: 'cache-0' }];
      return rec;
    };

    it('keeps it while its mover may still be looking after it', async () => {
      const { store, reconciler } = setup(moving());
      await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
      await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
      expect(store.rec!.instances.map((i) => i.id)).to.deep.equal(['cache-0', 'cache-1']);
      expect(tombstones(store)).to.deep.equal([]);
    });

    it('drops it once its cell has been silent past the bound', async () => {
      const { store, reconciler } = setup(moving());
      const realNow = Date.now;
      try {
        await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
        const later = realNow() + MOVE_TARGET_SILENCE_MS + 1_000;
        Date.now = () => later;
        await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
      } finally {
        Date.now = realNow;
      }
      expect(store.rec!.instances.map((i) => i.id)).to.deep.equal(['cache-0']);
      expect(tombstones(store).map((op) => (op as { field: string }).field)).to.deep.equal(['c2/cache-1']);
    });

    it('counts the silence afresh after its cell was seen again', async () => {
      const { store, reconciler } = setup(moving());
      const realNow = Date.now;
      try {
        await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
        await reconciler.reconcile('cache', fence, cells({ c1: true, c2: true, c3: true }), { cellGrace: false });
        const later = realNow() + MOVE_TARGET_SILENCE_MS + 1_000;
        Date.now = () => later;
        await reconciler.reconcile('cache', fence, cells({ c1: true, c2: false, c3: true }), { cellGrace: false });
      } finally {
        Date.now = realNow;
      }
      expect(store.rec!.instances.map((i) => i.id)).to.deep.equal(['cache-0', 'cache-1']);
    });
  });

  describe('a deposed primary whose cell is back', () => {
    const deposed = (): ServiceRecord => {
      const rec = service();
      rec.epoch = 4;
      rec.instances = [
        { ...inst('cache-0', 'c1', 'replica'), fenced: { epoch: 4, at: 0, trigger: 'cell-dead', complete: true } },
        { ...inst('cache-1', 'c2', 'primary'), epoch: 4 },
      ];
      return rec;
    };

    it('restarts it at a new generation as a replica of the new primary when its engine still says primary', async () => {
      const { store, reconciler } = setup(deposed());
      const c = cells({ c1: true, c2: true });
      await reconciler.reconcile('cache', fence, c, { cellGrace: false });
      const old = store.rec!.instances.find((i) => i.id === 'cache-0')!;
      expect(old).to.include({ role: 'replica', generation: 1 });
      expect(old.fenced).to.equal(undefined);
      expect(old.upstream).to.deep.equal({ host: '127.0.0.1', port: c.get('c2')!.actual.get('cache-1')!.port });
      const spec = opsOf(store).find((op) => op.cmd === 'HSET' && op.key === keys.cell('c1').desired);
      expect(JSON.parse((spec as { value: string }).value)).to.include({ role: 'replica', generation: 1 });
    });

    it('restarts it as a replica too when its cell shot it on return (fenced, failed or stopped)', async () => {
      for (const state of ['fenced', 'failed', 'stopped'] as const) {
        const { store, reconciler } = setup(deposed());
        const c = cells({ c1: true, c2: true });
        Object.assign(c.get('c1')!.actual.get('cache-0')!, { state, role: 'primary' });
        await reconciler.reconcile('cache', fence, c, { cellGrace: false });
        const old = store.rec!.instances.find((i) => i.id === 'cache-0')!;
        expect(old, state).to.include({ role: 'replica', generation: 1 });
        expect(old.fenced, state).to.equal(undefined);
      }
    });

    it('leaves it alone during a new leader grace or while its engine already follows', async () => {
      for (const [grace, role] of [
        [true, 'primary'],
        [false, 'replica'],
      ] as const) {
        const { store, reconciler } = setup(deposed());
        const c = cells({ c1: true, c2: true });
        c.get('c1')!.actual.get('cache-0')!.role = role;
        await reconciler.reconcile('cache', fence, c, { cellGrace: grace });
        expect(store.rec!.instances.find((i) => i.id === 'cache-0')).to.include({ generation: 0 });
      }
    });
  });

  describe('a record behind its cells (state restored from an older copy)', () => {
    it('adopts the instance that runs as primary at a higher epoch, never demotes it', async () => {
      for (const oldRole of ['primary', 'replica'] as const) {
        const { store, coordinator, reconciler } = setup(service());
        const c = cells({ c1: true, c2: true });
        // A failover after the copy was written: cache-1 was promoted at epoch 4; cache-0 either
        // still runs as the deposed primary or already follows cache-1.
        Object.assign(c.get('c2')!.actual.get('cache-1')!, { role: 'primary', epoch: 4 });
        Object.assign(c.get('c1')!.actual.get('cache-0')!, { role: oldRole, epoch: oldRole === 'primary' ? 3 : 4 });
        await reconciler.reconcile('cache', fence, c, { cellGrace: true });
        expect(coordinator.losses).to.deep.equal([]);
        const rec = store.rec!;
        expect(rec.epoch).to.equal(4);
        expect(rec.instances.find((i) => i.id === 'cache-1')).to.include({ role: 'primary', epoch: 4, generation: 0 });
        const old = rec.instances.find((i) => i.id === 'cache-0')!;
        // Still a primary: restarted as a replica (new generation); already following: left as it runs.
        expect(old).to.include({ role: 'replica', epoch: 4, generation: oldRole === 'primary' ? 1 : 0 });
        expect(old.upstream).to.deep.equal({ host: '127.0.0.1', port: c.get('c2')!.actual.get('cache-1')!.port });
        const spec = opsOf(store).find((op) => op.cmd === 'HSET' && op.key === keys.cell('c2').desired);
        expect(JSON.parse((spec as { value: string }).value)).to.include({ role: 'primary', epoch: 4 });
      }
    });

    it('leaves a record alone whose primary epoch is the highest reported', async () => {
      const { store, reconciler } = setup(service());
      await reconciler.reconcile('cache', fence, cells({ c1: true, c2: true }), { cellGrace: false });
      expect(store.rec!.instances.find((i) => i.id === 'cache-0')).to.include({ role: 'primary', epoch: 3 });
    });
  });

  describe('reconcile of a deleted service', () => {
    it('tombstones every volume for the collector instead of ordering deletions itself', async () => {
      const rec = service('deleting');
      rec.instances = rec.instances.map((i) => ({ ...i, specWritten: false }));
      const { store, reconciler } = setup(rec);
      const c = cells({ c1: true, c2: false });
      for (const snap of c.values()) for (const a of snap.actual.values()) a.state = 'stopped';
      await reconciler.reconcile('cache', fence, c);
      expect(store.rec).to.equal(null);
      expect(deleteOrders(store)).to.deep.equal([]);
      expect(tombstones(store).map((op) => (op as { field: string }).field)).to.deep.equal([
        'c1/cache-0',
        'c2/cache-1',
      ]);
    });
  });

  describe('reconcile of a starting service', () => {
    /** An emitter whose route is current once sync wrote it. */
    function routeEmitter() {
      const state = { synced: false, syncs: 0 };
      const fake = {
        sync: async () => {
          state.syncs++;
          state.synced = true;
          return true;
        },
        removeMany: async () => new Set<string>(),
        isCurrent: async () => state.synced,
      };
      return { state, fake };
    }

    it('writes the route first and runs in one reconcile once every instance reports running', async () => {
      const { state, fake } = routeEmitter();
      const store = new FakeStore(service('starting'));
      const reconciler = new ServiceReconciler(
        store as unknown as ServiceStore,
        fake as unknown as RouteEmitter,
        new FakeCoordinator(),
      );
      await reconciler.reconcile('cache', fence, cells({ c1: true, c2: true }));
      expect(store.rec!.status).to.equal('running');
      expect(state.syncs).to.be.greaterThan(0);
    });

    it('writes no route ahead while an instance has not reported running', async () => {
      const { state, fake } = routeEmitter();
      const store = new FakeStore(service('starting'));
      const reconciler = new ServiceReconciler(
        store as unknown as ServiceStore,
        fake as unknown as RouteEmitter,
        new FakeCoordinator(),
      );
      const c = cells({ c1: true, c2: true });
      c.get('c2')!.actual.get('cache-1')!.state = 'starting';
      await reconciler.reconcile('cache', fence, c);
      expect(store.rec!.status).to.equal('starting');
      // Only the sync after the change (which has nothing of cache-1 to route yet).
      expect(state.syncs).to.equal(1);
    });
  });

  describe('placeNew', () => {
    /** A store holding several new services; changeMany commits what decide returns. */
    function batchStore(records: ServiceRecord[], existing: ServiceRecord[] = []) {
      const all = new Map([...existing, ...records].map((r) => [r.name, r]));
      const commits: Array<Map<string, ServiceChange>> = [];
      const store = {
        keys,
        usageAt: (s: ServiceSnapshot) => ServiceUsage.of(s.services.values()),
        async changeMany<T>(
          names: readonly string[],
          _fence: LeaderFence | null,
          decide: (
            c: ReadonlyMap<string, ServiceRecord | null>,
            s: ServiceSnapshot,
          ) => Promise<{ changes: ReadonlyMap<string, ServiceChange>; result: T }>,
        ): Promise<T> {
          const current = new Map(names.map((n) => [n, all.has(n) ? structuredClone(all.get(n)!) : null]));
          const { changes, result } = await decide(current, { version: 1, services: new Map(all) });
          commits.push(new Map(changes));
          for (const [name, change] of changes) {
            if (change.record) all.set(name, change.record);
            else all.delete(name);
          }
          return result;
        },
      };
      const reconciler = new ServiceReconciler(
        store as unknown as ServiceStore,
        emitter as unknown as RouteEmitter,
        new FakeCoordinator(),
      );
      return { reconciler, commits, all };
    }

    const fresh = (name: string, sizeMb: number): ServiceRecord => ({
      ...service('pending'),
      name,
      replicas: 0,
      volume: { sizeMb },
      instances: [],
      nextIndex: 0,
    });

    function twoCells(capacityMb: number): Map<string, CellSnapshot> {
      const c = cells({ c1: true, c2: true });
      for (const snap of c.values()) {
        snap.record!.capacityMb = capacityMb;
        snap.actual.clear();
      }
      return c;
    }

    it('places several new services in one commit, each auction counting the space the earlier ones took', async () => {
      const { reconciler, commits, all } = batchStore([fresh('a', 60), fresh('b', 60), fresh('c', 60)]);
      const decided = await reconciler.placeNew(['a', 'b', 'c'], fence, twoCells(100));
      expect([...decided]).to.have.members(['a', 'b', 'c']);
      expect(commits).to.have.length(1);
      // Two cells of 100 MB hold one 60 MB volume each: the third does not fit anywhere.
      expect(all.get('a')!.instances.map((i) => i.cell)).to.have.length(1);
      expect(all.get('b')!.instances.map((i) => i.cell)).to.have.length(1);
      expect(all.get('a')!.instances[0]!.cell).to.not.equal(all.get('b')!.instances[0]!.cell);
      expect(all.get('c')!).to.include({ status: 'unplaceable' });
      expect(all.get('c')!.instances).to.deep.equal([]);
      // The primary's spec goes out with the placement.
      const specs = [...commits[0]!.values()].flatMap((c) => c.extraOps ?? []).filter((op) => op.cmd === 'HSET');
      expect(specs).to.have.length(2);
      expect(all.get('a')!.instances[0]).to.include({ role: 'primary', specWritten: true });
    });

    it('counts the space existing records promise, and leaves services that are no longer new to reconcile', async () => {
      const placed: ServiceRecord = {
        ...fresh('old', 60),
        status: 'running',
        instances: [{ ...inst('old-0', 'c1', 'primary') }],
      };
      const { reconciler, all } = batchStore([fresh('a', 60)], [placed]);
      const decided = await reconciler.placeNew(['a', 'old', 'gone'], fence, twoCells(100));
      expect([...decided]).to.deep.equal(['a']);
      expect(all.get('a')!.instances[0]!.cell).to.equal('c2');
      expect(all.get('old')).to.equal(placed);
    });
  });

  describe('runReady', () => {
    /** Starting services; `cells` reports cache-0 and cache-1 running, so `readyNamed` ones are ready. */
    const readyNamed = (name: string): ServiceRecord => {
      const rec = { ...service('starting'), name };
      // The replica already follows the primary's reported address (cells(): c1 reports port 20000).
      rec.instances[1]!.upstream = { host: '127.0.0.1', port: 20000 };
      return rec;
    };
    const notReported = (name: string): ServiceRecord => ({
      ...service('starting'),
      name,
      instances: [inst(`${name}-0`, 'c1', 'primary'), inst(`${name}-1`, 'c2', 'replica')],
    });

    /**
     * A store whose changeMany commits what decide returns (`before` may change a record first,
     * as another writer would), and an emitter whose routes are current once written, unless
     * `unwritable` names the service.
     */
    function runFixture(
      records: ServiceRecord[],
      options: { before?: (all: Map<string, ServiceRecord>) => void } = {},
    ) {
      const all = new Map(records.map((r) => [r.name, r]));
      const commits: Array<{ fence: LeaderFence | null; changes: Map<string, ServiceChange> }> = [];
      const calls: string[] = [];
      const store = {
        keys,
        usageAt: (s: ServiceSnapshot) => ServiceUsage.of(s.services.values()),
        snapshot: async () => ({ version: 1, services: new Map(all) }),
        async changeMany<T>(
          names: readonly string[],
          f: LeaderFence | null,
          decide: (
            c: ReadonlyMap<string, ServiceRecord | null>,
            s: ServiceSnapshot,
          ) => Promise<{ changes: ReadonlyMap<string, ServiceChange>; result: T }>,
        ): Promise<T> {
          options.before?.(all);
          calls.push(`commit ${names.join(',')}`);
          const current = new Map(names.map((n) => [n, all.has(n) ? structuredClone(all.get(n)!) : null]));
          const { changes, result } = await decide(current, { version: 1, services: new Map(all) });
          commits.push({ fence: f, changes: new Map(changes) });
          for (const [name, change] of changes) {
            if (change.record) all.set(name, change.record);
            else all.delete(name);
          }
          return result;
        },
      };
      const routed = new Set<string>();
      const unwritable = new Set<string>();
      const tokens: number[] = [];
      const routeEmitter = {
        async syncMany(services: readonly ServiceRecord[], _cells: unknown, token: number) {
          calls.push(`routes ${services.map((s) => s.name).join(',')}`);
          tokens.push(token);
          for (const s of services) if (!unwritable.has(s.name)) routed.add(s.name);
          return new Set(services.map((s) => s.name));
        },
        async currentRoutes(services: readonly ServiceRecord[]) {
          // A route stands for "written": the fake's isCurrentGiven says current when there is one.
          return new Map(services.map((s) => [s.name, routed.has(s.name) ? ({ port: s.port } as unknown) : null]));
        },
        async isCurrentGiven(_next: ServiceRecord, route: unknown) {
          return route !== null;
        },
        async isCurrent() {
          throw new Error('runReady reads no route per service');
        },
      };
      const reconciler = new ServiceReconciler(
        store as unknown as ServiceStore,
        routeEmitter as unknown as RouteEmitter,
        new FakeCoordinator(),
      );
      return { reconciler, all, commits, calls, tokens, unwritable };
    }

    it('writes the routes of the ready ones in one request, then marks them running in one fenced commit', async () => {
      const f = runFixture([readyNamed('s1'), readyNamed('s2'), notReported('s3')]);
      const decided = await f.reconciler.runReady(['s1', 's2', 's3'], fence, cells({ c1: true, c2: true }));
      expect([...decided]).to.have.members(['s1', 's2']);
      // Routes first (the route must hold every instance before the record says running), then
      // one commit, then the routes of what it committed (nothing left to write).
      expect(f.calls).to.deep.equal(['routes s1,s2', 'commit s1,s2', 'routes s1,s2']);
      expect(f.commits).to.have.length(1);
      expect(f.commits[0]!.fence).to.equal(fence);
      expect(f.tokens).to.deep.equal([fence.token, fence.token]);
      expect([...f.commits[0]!.changes.keys()]).to.deep.equal(['s1', 's2']);
      for (const name of ['s1', 's2']) {
        expect(f.all.get(name)).to.include({ status: 'running', leaderToken: fence.token });
        const events = f.commits[0]!.changes.get(name)!.events ?? [];
        expect(events.map((e) => e.type)).to.deep.equal(['service-running']);
      }
      expect(f.all.get('s3')).to.include({ status: 'starting' });
    });

    it('leaves a service starting when its route is not current after the write', async () => {
      const f = runFixture([readyNamed('s1'), readyNamed('s2')]);
      f.unwritable.add('s2');
      const decided = await f.reconciler.runReady(['s1', 's2'], fence, cells({ c1: true, c2: true }));
      expect([...decided]).to.have.members(['s1', 's2']);
      expect(f.all.get('s1')).to.include({ status: 'running' });
      expect(f.all.get('s2')).to.include({ status: 'starting' });
      expect([...f.commits[0]!.changes.keys()]).to.deep.equal(['s1']);
    });

    it('leaves a record that changed after its route was written to reconcile', async () => {
      const f = runFixture([readyNamed('s1'), readyNamed('s2')], {
        before: (all) => all.set('s2', { ...all.get('s2')!, updatedAt: 42 }),
      });
      const decided = await f.reconciler.runReady(['s1', 's2'], fence, cells({ c1: true, c2: true }));
      expect([...decided]).to.deep.equal(['s1']);
      expect([...f.commits[0]!.changes.keys()]).to.deep.equal(['s1']);
      expect(f.all.get('s2')).to.include({ status: 'starting', updatedAt: 42 });
    });

    it('writes nothing when none is ready', async () => {
      const f = runFixture([notReported('s3'), { ...readyNamed('s4'), status: 'running' }]);
      const decided = await f.reconciler.runReady(['s3', 's4', 'gone'], fence, cells({ c1: true, c2: true }));
      expect([...decided]).to.deep.equal([]);
      expect(f.calls).to.deep.equal([]);
    });
  });

  describe('recheck', () => {
    it('reads the routes of many settled services at once and names those as they should be', async () => {
      const reads: string[][] = [];
      const current = new Set(['s1', 's3']);
      const fake = {
        async currentRoutes(records: readonly ServiceRecord[]) {
          reads.push(records.map((r) => r.name));
          // s4's router group is gone: no route to read.
          return new Map(records.filter((r) => r.name !== 's4').map((r) => [r.name, { port: r.port } as unknown]));
        },
        async isCurrentGiven(rec: ServiceRecord, route: unknown) {
          return route !== null && current.has(rec.name);
        },
        async isCurrent() {
          throw new Error('recheck reads no route per service');
        },
      };
      const reconciler = new ServiceReconciler(
        new FakeStore(null) as unknown as ServiceStore,
        fake as unknown as RouteEmitter,
        new FakeCoordinator(),
      );
      const records = [
        { ...service('running'), name: 's1' },
        { ...service('running'), name: 's2' },
        { ...service('degraded'), name: 's3' },
        { ...service('running'), name: 's4' },
      ];
      const fine = await reconciler.recheck(records, cells({ c1: true, c2: true }));
      expect(reads).to.deep.equal([['s1', 's2', 's3', 's4']]);
      // s2's route drifted, s3 no longer runs, s4 has no group: each for a reconcile of its own.
      expect([...fine]).to.deep.equal(['s1']);
    });
  });
});
