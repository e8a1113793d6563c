import { expect } from 'chai';
import { FencingFailoverCoordinator } from '../../../control/failover/fencing-coordinator';
import { FencingOperation, FencingSequence } from '../../../control/failover/fencing-sequence';
import { planAction } from '../../../control/failover/action-validation';
import type { LeaderElector } from '../../../control/leader/leader-elector';
import type { ServiceStore } from '../../../control/services/service-store';
import type { CellDirectory } from '../../../control/services/cell-directory';
import type { RouteEmitter } from '../../../control/services/route-emitter';
import type { RouterGroupStore } from '../../../control/state/router-group-store';
import type { TcpRouteStore } from '../../../control/state/tcp-route-store';
import type { Redis } from 'ioredis';
import pino from 'pino';
import { ErrorCode, isSfError } from '../../../common/errors';
import {
  FAST_OPTIONS,
  FENCE,
  FakeCells,
  FakeHistory,
  FakeSteps,
  FakeStore,
  instance,
  service,
  storeRecord,
} from './failover-fakes';
import type { ServiceRecord } from '../../../control/services/service-types';

interface World {
  store: FakeStore;
  cells: FakeCells;
  steps: FakeSteps;
  history: FakeHistory;
  sequence: FencingSequence;
  coordinator: FencingFailoverCoordinator;
  op(trigger?: string): FencingOperation;
}

function world(rec: ServiceRecord = service()): World {
  const store = new FakeStore(rec);
  const cells = new FakeCells(store);
  const steps = new FakeSteps(store);
  const history = new FakeHistory();
  const sequence = new FencingSequence({ store, directory: cells, steps: steps.steps, options: FAST_OPTIONS });
  const coordinator = new FencingFailoverCoordinator(
    {
      // Never touched: steps and history are fakes, and act() reads no lease.
      redis: undefined as unknown as Redis,
      store: store as unknown as ServiceStore,
      directory: cells as unknown as CellDirectory,
      emitter: undefined as unknown as RouteEmitter,
      groups: undefined as unknown as RouterGroupStore,
      routes: undefined as unknown as TcpRouteStore,
      logger: pino({ level: 'silent' }),
      steps: steps.steps,
      history,
    },
    FAST_OPTIONS,
  );
  coordinator.attach({ current: () => FENCE } as unknown as LeaderElector);
  return {
    store,
    cells,
    steps,
    history,
    sequence,
    coordinator,
    op: (trigger = 'operator-fence') => new FencingOperation('op-1', 'cache', trigger, FENCE, history),
  };
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; field?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    if (isSfError(err)) return { code: err.code, field: err.field, message: err.message };
    throw err;
  }
  throw new Error('the action was not refused');
}

/** A refused action leaves no trace: no effect, no history entry, no record write. */
function expectNoTrace(w: World, before: ServiceRecord): void {
  expect(w.steps.log, 'effects').to.deep.equal([]);
  expect(w.history.steps, 'history').to.deep.equal([]);
  expect(w.store.writes, 'record writes').to.deep.equal([]);
  expect(storeRecord(w.store)).to.deep.equal(before);
}

describe('FencingFailoverCoordinator', () => {
  describe('act (validation before everything)', () => {
    it('refuses failover --to an unknown instance before anything is fenced, floored or published', async () => {
      const w = world();
      const before = structuredClone(storeRecord(w.store));
      const err = await refusal(w.coordinator.act('failover', 'cache', 'nosuch'));
      expect(err).to.include({ code: ErrorCode.InvalidFailoverTarget, field: 'to' });
      expectNoTrace(w, before);
    });

    it('refuses failover --to the primary, a fenced replica, or a replica that is not running', async () => {
      for (const [target, setup] of [
        ['cache-0', () => undefined],
        ['cache-1', (w: World) => w.cells.states.set('cache-1', 'failed')],
        [
          'cache-1',
          (w: World) =>
            storeRecord(w.store).instances[1] &&
            (storeRecord(w.store).instances[1].fenced = { epoch: 1, at: 0, trigger: 't', complete: true }),
        ],
      ] as const) {
        const w = world();
        setup(w);
        const before = structuredClone(storeRecord(w.store));
        const err = await refusal(w.coordinator.act('failover', 'cache', target));
        expect(err.code).to.equal(ErrorCode.InvalidFailoverTarget);
        expectNoTrace(w, before);
      }
    });

    it('refuses an unknown service with 404 and touches nothing', async () => {
      const w = world();
      const before = structuredClone(storeRecord(w.store));
      expect((await refusal(w.coordinator.act('fence', 'nosuch'))).code).to.equal(ErrorCode.NotFound);
      expectNoTrace(w, before);
    });

    it('refuses a failover or a fence when no replica runs (fencing would leave no writer)', async () => {
      for (const action of ['failover', 'fence'] as const) {
        const w = world();
        w.cells.states.set('cache-1', 'starting');
        const before = structuredClone(storeRecord(w.store));
        expect((await refusal(w.coordinator.act(action, 'cache'))).code).to.equal(ErrorCode.NoPromotionCandidate);
        expectNoTrace(w, before);
      }
    });

    it('refuses manual-policy misuse: unfence with nothing fenced, unfence of a fenced primary, a second fence', async () => {
      const fencedPrimary = service({
        fencing: { policy: 'manual' },
        epoch: 2,
        instances: [
          instance('cache-0', 'cell-1', 'primary', {
            fenced: { epoch: 2, at: 0, trigger: 'operator-fence', complete: true },
          }),
          instance('cache-1', 'cell-2', 'replica'),
        ],
      });
      for (const [rec, action] of [
        [service({ fencing: { policy: 'manual' } }), 'unfence'],
        [fencedPrimary, 'unfence'],
        [fencedPrimary, 'fence'],
      ] as const) {
        const w = world(structuredClone(rec));
        const before = structuredClone(storeRecord(w.store));
        expect((await refusal(w.coordinator.act(action, 'cache'))).code).to.equal(ErrorCode.ActionRefused);
        expectNoTrace(w, before);
      }
    });

    it('turns a switchover from a primary that does not answer into a failover: shot before the promotion', async () => {
      // The cell still reports the primary running: killed a moment ago, not reported yet.
      const w = world();
      w.steps.silent.add('cache-0');
      const res = await w.coordinator.act('failover', 'cache');
      expect(res.service.instances.find((i) => i.role === 'primary')?.id).to.equal('cache-1');
      expect(res.steps[0]).to.include({ step: 'check', instanceId: 'cache-0' });
      // Fenced as a lost primary, never paused or stopped as a healthy one.
      expect(w.steps.at('shoot:cache-0')).to.be.greaterThan(-1);
      expect(w.steps.at('shoot:cache-0')).to.be.lessThan(w.steps.at('promote:cache-1'));
      expect(w.steps.log.filter((e) => e.startsWith('stop:') || e.startsWith('pause'))).to.deep.equal([]);
    });

    it("a move's switchover from a primary that does not answer is refused, with nothing fenced, shot or published", async () => {
      // On a loaded machine a healthy source can miss one position read; shooting it would lose
      // what the move's replica had not received yet.
      const w = world();
      w.steps.silent.add('cache-0');
      const before = structuredClone(storeRecord(w.store));
      const err = await refusal(w.coordinator.act('failover', 'cache', 'cache-1', { failoverIfSilent: false }));
      expect(err.code).to.equal(ErrorCode.OrderFailed);
      expectNoTrace(w, before);
    });

    it('runs the same failover once the target is valid', async () => {
      const w = world();
      const res = await w.coordinator.act('failover', 'cache', 'cache-1');
      expect(res.service.instances.find((i) => i.role === 'primary')?.id).to.equal('cache-1');
      expect(w.steps.at('promote:cache-1')).to.be.greaterThan(-1);
    });
  });
});

describe('planAction', () => {
  it('plans a switchover for a healthy primary, a fence-and-promote for a lost one, a promotion after a fence', async () => {
    const w = world();
    const cells = await w.cells.snapshot();
    expect(planAction('failover', storeRecord(w.store), cells).kind).to.equal('switchover');
    w.cells.states.set('cache-0', 'failed');
    expect(planAction('failover', storeRecord(w.store), await w.cells.snapshot()).kind).to.equal('failover');
    storeRecord(w.store).instances[0].fenced = { epoch: 2, at: 0, trigger: 't', complete: true };
    expect(planAction('failover', storeRecord(w.store), await w.cells.snapshot()).kind).to.equal('promote');
  });
});

describe('FencingSequence', () => {
  describe('fencePrimary + promote', () => {
    it('route-fences, waits for routers, shoots, floors, and only then promotes and publishes the new primary', async () => {
      const w = world();
      await w.sequence.fencePrimary(w.op());
      await w.sequence.promote(w.op());
      const { log } = w.steps;
      expect(log[0]).to.equal('publish:primary=none:fenced=cache-0');
      const order = [
        'publish:primary=none',
        'await-routers',
        'shoot:cache-0',
        'floor:cache-0:2',
        'promote:cache-1:2',
        'publish:primary=cache-1',
      ];
      const idx = order.map((p) => w.steps.at(p));
      expect(
        idx.every((i) => i >= 0),
        log.join(' '),
      ).to.equal(true);
      expect([...idx].sort((a, b) => a - b)).to.deep.equal(idx);
      const rec = storeRecord(w.store);
      expect(rec.instances.find((i) => i.id === 'cache-1')?.role).to.equal('primary');
      // The old primary comes back as a replica at a new generation, never as a primary.
      expect(rec.instances.find((i) => i.id === 'cache-0')).to.include({ role: 'replica', generation: 1 });
    });

    it('cuts the network of a primary whose cell has an address of its own, never of one that shares it', async () => {
      const own = world();
      own.cells.hosts = new Map([
        ['cell-1', '10.0.0.1'],
        ['cell-2', '10.0.0.2'],
      ]);
      await own.sequence.fencePrimary(own.op());
      expect(own.steps.at('cut:cell-1'), own.steps.log.join(' ')).to.be.greaterThan(own.steps.at('floor:cache-0'));
      // cell-3 shares cell-1's address (same host or namespace): a prohibit route set there would
      // cut cell-3 off too, so the fence is skipped and says why.
      const shared = world();
      shared.cells.hosts = new Map([
        ['cell-1', '10.0.0.1'],
        ['cell-2', '10.0.0.2'],
        ['cell-3', '10.0.0.1'],
      ]);
      await shared.sequence.fencePrimary(shared.op());
      expect(shared.steps.at('cut:'), shared.steps.log.join(' ')).to.equal(-1);
      const step = shared.history.steps.find((s) => s.step === 'network-fence');
      expect(step?.outcome).to.equal('skipped');
      expect(step?.message).to.contain('shares its address 10.0.0.1 with cell-3');
    });

    it('lifts the network fence after the promotion, before the old primary rejoins as a replica', async () => {
      const w = world();
      w.cells.hosts = new Map([
        ['cell-1', '10.0.0.1'],
        ['cell-2', '10.0.0.2'],
      ]);
      await w.sequence.fencePrimary(w.op());
      await w.sequence.promote(w.op());
      const { log } = w.steps;
      expect(w.steps.at('lift:cell-1'), log.join(' ')).to.be.greaterThan(w.steps.at('promote:cache-1:2'));
      expect(w.steps.at('lift:cell-1'), log.join(' ')).to.be.lessThan(w.steps.at('publish:primary=cache-1'));
      const rec = storeRecord(w.store);
      expect(rec.instances.find((i) => i.id === 'cache-0')).to.include({ role: 'replica', generation: 1 });
      expect(w.history.steps.find((s) => s.step === 'unfence')?.outcome).to.equal('ok');
    });

    it('says degraded from the route fence on, never running while writes are paused', async () => {
      const w = world();
      expect(storeRecord(w.store).status).to.equal('running');
      await w.sequence.fencePrimary(w.op('instance-failed'));
      expect(storeRecord(w.store)).to.include({ status: 'degraded' });
      expect(storeRecord(w.store).message).to.match(/cache-0 fenced \(instance-failed\).*writes paused/);
      // The reconciler judges the new primary afterwards; the sequence never claims `running`.
      await w.sequence.promote(w.op('instance-failed'));
      expect(storeRecord(w.store).status).to.equal('degraded');
    });

    it('stops at a failed route fence: nothing is shot, floored or promoted', async () => {
      const w = world();
      w.steps.fail.publish = 'throw';
      await refusal(w.sequence.fencePrimary(w.op())).catch(() => undefined);
      expect(w.steps.log).to.deep.equal(['publish:primary=none:fenced=cache-0']);
    });

    it('stops at a failed lease floor: no promotion', async () => {
      const w = world();
      w.steps.fail.floor = 'throw';
      let threw = false;
      try {
        await w.sequence.fencePrimary(w.op());
        await w.sequence.promote(w.op());
      } catch {
        threw = true;
      }
      expect(threw).to.equal(true);
      expect(w.steps.at('promote')).to.equal(-1);
      expect(storeRecord(w.store).instances[0].fenced?.complete).to.equal(false);
    });

    it('a refused promote publishes no new primary and leaves the old one fenced', async () => {
      const w = world();
      w.steps.fail.promote = 'refuse';
      await w.sequence.fencePrimary(w.op());
      expect((await refusal(w.sequence.promote(w.op()))).code).to.equal(ErrorCode.OrderFailed);
      expect(w.steps.log.filter((e) => e.startsWith('publish'))).to.deep.equal(['publish:primary=none:fenced=cache-0']);
      const rec = storeRecord(w.store);
      expect(rec.instances[0]).to.include({ role: 'primary' });
      expect(rec.instances[0].fenced?.complete).to.equal(true);
      expect(w.history.steps.map((s) => `${s.step}:${s.outcome}`)).to.include('promote:failed');
    });

    it('with no replica to promote, restarts the fenced primary in place with the new epoch (it holds every write)', async () => {
      const w = world();
      // The replica's first base backup never finished: nothing else has the data.
      w.cells.states.set('cache-1', 'failed');
      await w.sequence.fencePrimary(w.op('instance-failed'));
      await w.sequence.promote(w.op('instance-failed'));
      expect(w.steps.at('promote:')).to.equal(-1);
      expect(w.steps.log.at(-1)).to.equal('publish:primary=cache-0');
      const rec = storeRecord(w.store);
      expect(rec.instances[0]).to.include({ id: 'cache-0', role: 'primary', epoch: 2, generation: 1 });
      expect(rec.instances[0].fenced).to.equal(undefined);
      expect(w.history.steps.map((s) => `${s.step}:${s.outcome}`)).to.include('restart-in-place:ok');
    });

    it('shoots a primary whose cell came back between the cell-dead snapshot and the lease floor', async () => {
      const w = world();
      w.cells.alive = new Set(['cell-2']);
      // The cell registers again while the route fence is being published, before the floor.
      const publish = w.steps.steps.routeFence.publish.bind(w.steps.steps.routeFence);
      w.steps.steps.routeFence.publish = async (...args) => {
        const version = await publish(...args);
        w.cells.alive = new Set();
        return version;
      };
      await w.sequence.fencePrimary(w.op('cell-dead'));
      const floor = w.steps.at('floor:cache-0:2');
      const shot = w.steps.at('shoot:cache-0');
      expect(floor, w.steps.log.join(' ')).to.be.at.least(0);
      expect(shot, w.steps.log.join(' ')).to.be.greaterThan(floor);
      expect(w.history.steps.map((s) => `${s.step}:${s.outcome}`)).to.deep.include.members([
        'shoot:skipped',
        'shoot:ok',
      ]);
    });

    it('does not shoot a primary whose cell stays dead', async () => {
      const w = world();
      w.cells.alive = new Set(['cell-2']);
      await w.sequence.fencePrimary(w.op('cell-dead'));
      expect(w.steps.at('shoot:cache-0'), w.steps.log.join(' ')).to.equal(-1);
    });

    it('with no replica to promote and the primary on a dead cell, restarts nothing and stays fenced', async () => {
      const w = world();
      w.cells.states.set('cache-1', 'failed');
      w.cells.alive = new Set(['cell-2']);
      await w.sequence.fencePrimary(w.op('cell-dead'));
      expect((await refusal(w.sequence.promote(w.op('cell-dead')))).code).to.equal(ErrorCode.NoPromotionCandidate);
      expect(storeRecord(w.store).instances[0].fenced?.complete).to.equal(true);
      expect(w.steps.log.filter((e) => e.startsWith('publish'))).to.deep.equal(['publish:primary=none:fenced=cache-0']);
    });
  });

  describe('switchover', () => {
    it('an engine that cannot pause is stopped once the routers let go of it, BEFORE the promotion, and reports after it rejoined and a write committed', async () => {
      const w = world();
      const rec = await w.sequence.switchover(w.op('switchover'));
      const order = [
        'pause-unsupported:cache-0',
        'stop:cache-0',
        'promote:cache-1:2',
        'publish:primary=cache-1',
        'await-replica:cache-0:1',
        'commit-check:cache-1',
      ];
      const idx = order.map((p) => w.steps.at(p));
      expect(
        idx.every((i) => i >= 0),
        w.steps.log.join(' '),
      ).to.equal(true);
      expect([...idx].sort((a, b) => a - b)).to.deep.equal(idx);
      // The route fence, the routers and the floor all come before the stop: no client writes
      // through a router while it shuts down.
      for (const before of ['publish:primary=none:fenced=cache-0', 'await-routers', 'floor:cache-0:2'])
        expect(w.steps.at(before), before).to.be.within(0, w.steps.at('stop:cache-0'));
      expect(w.steps.pausedWhileMarked).to.deep.equal([true]);
      expect(w.steps.at('shoot')).to.equal(-1);
      // Demoted, it follows the new primary and shows the new epoch, not the term it lost.
      expect(rec.instances.find((i) => i.id === 'cache-0')).to.include({ role: 'replica', generation: 1, epoch: 2 });
      expect(rec.instances.find((i) => i.id === 'cache-0')?.fenced).to.equal(undefined);
      expect(w.history.steps.map((s) => s.step)).to.include.members(['stop', 'rejoin', 'commit-check']);
      expect(w.history.steps.find((s) => s.step === 'pause')?.outcome).to.equal('skipped');
    });

    it('the catch-up goal of a stopped old primary is the position its stop reported: a target below it is never promoted', async () => {
      const w = world();
      w.steps.positions.set('cache-0', 200n);
      w.steps.positions.set('cache-1', 150n);
      expect((await refusal(w.sequence.switchover(w.op('switchover')))).code).to.equal(ErrorCode.CatchUpTimeout);
      expect(w.steps.at('promote:cache-1')).to.equal(-1);
      // Abandoned after the stop: a new generation restarts the old primary as the primary, unfenced.
      expect(storeRecord(w.store).instances[0]).to.include({ role: 'primary', epoch: 2, generation: 1 });
      expect(storeRecord(w.store).instances[0].fenced).to.equal(undefined);
    });

    it('a switchover refused before a target is chosen never stops an engine that cannot pause', async () => {
      const w = world();
      expect((await refusal(w.sequence.switchover(w.op('switchover'), 'nosuch'))).code).to.equal(
        ErrorCode.InvalidFailoverTarget,
      );
      await new Promise((r) => setTimeout(r, 20));
      expect(w.steps.at('pause-unsupported:cache-0')).to.be.greaterThan(-1);
      expect(w.steps.at('stop:cache-0'), w.steps.log.join(' ')).to.equal(-1);
      // Re-confirmed as the primary, running as it was (no restart).
      expect(storeRecord(w.store).instances[0]).to.include({ role: 'primary', epoch: 2, generation: 0 });
    });

    it('a stop that reports no position abandons the switchover and restarts the old primary', async () => {
      const w = world();
      w.steps.stopReportsPosition = false;
      expect((await refusal(w.sequence.switchover(w.op('switchover')))).message).to.match(
        /without reporting its position/,
      );
      expect(w.steps.at('promote:cache-1')).to.equal(-1);
      expect(storeRecord(w.store).instances[0]).to.include({ role: 'primary', epoch: 2, generation: 1 });
    });

    it('an engine that pauses writes is paused, not stopped, before the promotion, and restarted as a replica after it', async () => {
      const w = world();
      w.steps.canPause = true;
      const rec = await w.sequence.switchover(w.op('switchover'));
      // The pause goes out with the route fence (after the record marks the switchover), not after it.
      const order = [
        'pause:cache-0',
        'publish:primary=none:fenced=cache-0',
        'await-routers',
        'floor:cache-0:2',
        // The paused old primary follows the target before the target is promoted: one primary.
        'repoint:cache-0',
        'promote:cache-1:2',
        'publish:primary=cache-1',
        'await-replica:cache-0:1',
      ];
      const idx = order.map((p) => w.steps.at(p));
      expect(
        idx.every((i) => i >= 0),
        w.steps.log.join(' '),
      ).to.equal(true);
      expect([...idx].sort((a, b) => a - b)).to.deep.equal(idx);
      // No shutdown between the route fence and the new route: the restart as a replica stops it.
      expect(w.steps.at('stop')).to.equal(-1);
      expect(rec.instances.find((i) => i.id === 'cache-0')).to.include({ role: 'replica', generation: 1, epoch: 2 });
      expect(w.history.steps.find((s) => s.step === 'pause')?.outcome).to.equal('ok');
      expect(w.steps.pausedWhileMarked).to.deep.equal([true]);
    });

    it('a paused old primary that does not follow the target is stopped before the promotion', async () => {
      const w = world();
      w.steps.canPause = true;
      w.steps.fail.rejoin = 'silent';
      await w.sequence.switchover(w.op('switchover'), undefined, { awaitRejoin: false });
      expect(w.steps.at('repoint:cache-0')).to.be.greaterThan(-1);
      expect(w.steps.at('stop:cache-0')).to.be.greaterThan(w.steps.at('repoint:cache-0'));
      expect(w.steps.at('promote:cache-1:2')).to.be.greaterThan(w.steps.at('stop:cache-0'));
      expect(w.history.steps.find((s) => s.step === 'repoint')?.outcome).to.equal('degraded');
    });

    it('the catch-up goal is the paused position: a target below it is never promoted', async () => {
      const w = world();
      w.steps.canPause = true;
      w.steps.positions.set('cache-0', 200n);
      w.steps.positions.set('cache-1', 150n);
      expect((await refusal(w.sequence.switchover(w.op('switchover')))).code).to.equal(ErrorCode.CatchUpTimeout);
      expect(w.steps.at('promote:cache-1')).to.equal(-1);
      // Abandoned: the promote that re-confirms the old primary comes after the pause (it lifts it).
      expect(w.steps.at('promote:cache-0:2')).to.be.greaterThan(w.steps.at('pause:cache-0'));
      expect(storeRecord(w.store).instances[0]).to.include({ role: 'primary', epoch: 2, generation: 0 });
    });

    it('a target that keeps advancing is waited for past the catch-up bound', async () => {
      const w = world();
      w.steps.canPause = true;
      w.steps.positions.set('cache-0', 200n);
      w.steps.positions.set('cache-1', 100n);
      // One step per read, 20 ms apart: about 2 s to the goal, ten times the 200 ms bound.
      w.steps.advance.set('cache-1', 1n);
      const rec = await w.sequence.switchover(w.op('switchover'));
      expect(rec.instances.find((i) => i.id === 'cache-1')?.role).to.equal('primary');
      expect((w.steps.positions.get('cache-1') ?? 0n) >= 200n).to.equal(true);
    });

    it('a pause without an answer falls back to the clean stop before the promotion', async () => {
      const w = world();
      w.steps.canPause = true;
      w.steps.fail.pause = 'silent';
      await w.sequence.switchover(w.op('switchover'));
      expect(w.steps.at('pause:cache-0')).to.be.lessThan(w.steps.at('stop:cache-0'));
      expect(w.steps.at('stop:cache-0')).to.be.lessThan(w.steps.at('promote:cache-1:2'));
      expect(w.history.steps.find((s) => s.step === 'pause')?.outcome).to.equal('degraded');
    });

    it('retire: the old primary leaves the record in the promotion commit and is not restarted', async () => {
      const w = world(
        service({
          replicas: 0,
          durability: 'async',
          instances: [
            instance('cache-0', 'cell-1', 'primary'),
            instance('cache-2', 'cell-2', 'replica', { moveOf: 'cache-0' }),
          ],
        }),
      );
      w.steps.canPause = true;
      const retired: string[] = [];
      const rec = await w.sequence.switchover(w.op('switchover'), 'cache-2', {
        awaitRejoin: false,
        retire: (_rec, old) => {
          retired.push(old.id);
          return [];
        },
      });
      expect(retired).to.deep.equal(['cache-0']);
      expect(rec.instances.map((i) => i.id)).to.deep.equal(['cache-2']);
      expect(rec.instances[0]).to.include({ role: 'primary', epoch: 2 });
      expect(rec.instances[0].moveOf).to.equal(undefined);
      expect(w.steps.at('await-replica')).to.equal(-1);
      expect(w.steps.at('stop')).to.equal(-1);
      // The promotion is one commit: no record ever showed the new primary next to the old one.
      expect(w.store.writes.some((r) => r.instances.filter((i) => i.role === 'primary').length > 1)).to.equal(false);
      expect(w.history.steps.map((s) => s.step)).to.include('retire');
    });

    it('async durability: no commit check', async () => {
      const w = world(service({ durability: 'async' }));
      await w.sequence.switchover(w.op('switchover'));
      expect(w.steps.at('commit-check')).to.equal(-1);
    });

    it('a target that does not catch up abandons the switchover before anything is stopped or promoted', async () => {
      const w = world();
      w.steps.canPause = true;
      w.steps.fail.rejoin = 'silent';
      w.steps.positions.set('cache-0', 200n);
      w.steps.positions.set('cache-1', 100n);
      expect((await refusal(w.sequence.switchover(w.op('switchover')))).code).to.equal(ErrorCode.CatchUpTimeout);
      expect(w.steps.at('stop')).to.equal(-1);
      expect(w.steps.at('promote:cache-1')).to.equal(-1);
      // The old primary is re-confirmed with the new epoch and unfenced.
      expect(w.steps.at('promote:cache-0:2')).to.be.greaterThan(-1);
      expect(storeRecord(w.store).instances[0]).to.include({ role: 'primary', epoch: 2 });
      expect(storeRecord(w.store).instances[0].fenced).to.equal(undefined);
    });

    it('an old primary that does not stop is never joined by a second writer', async () => {
      const w = world();
      w.steps.fail.stop = 'refuse';
      await refusal(w.sequence.switchover(w.op('switchover')));
      expect(w.steps.at('promote:cache-1')).to.equal(-1);
      // It may or may not have stopped: a new generation restarts it as the primary.
      expect(storeRecord(w.store).instances[0]).to.include({ role: 'primary', generation: 1 });
    });

    it('a promote without an answer leaves the old primary fenced and stopped (it may be the second writer)', async () => {
      const w = world();
      w.steps.fail.promote = 'silent';
      expect((await refusal(w.sequence.switchover(w.op('switchover')))).code).to.equal(ErrorCode.OrderTimeout);
      const old = storeRecord(w.store).instances[0];
      expect(old.role).to.equal('primary');
      expect(old.generation).to.equal(0);
      expect(old.fenced).to.not.equal(undefined);
    });

    it('records degraded, not ok, when the new primary cannot commit with sync durability', async () => {
      const w = world();
      w.steps.fail.commit = 'refuse';
      await w.sequence.switchover(w.op('switchover'));
      const check = w.history.steps.filter((s) => s.step === 'commit-check');
      expect(check.at(-1)?.outcome).to.equal('degraded');
    });
  });
});
