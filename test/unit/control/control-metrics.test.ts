/**
 * ControlMetrics against fake sources: what a scrape shows for instances, fencing and leadership.
 * The integration suites check that the endpoint answers; these check the numbers.
 */
import { expect } from 'chai';
import { ControlMetrics, type InstanceSource } from '../../../control/control-metrics';
import type { CellSnapshot } from '../../../control/services/cell-directory';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { FencingHistoryLike } from '../../../control/failover/fencing-coordinator';
import type { FencingStep } from '../../../control/failover/fencing-history';
import type { LeaderFence } from '../../../control/leader/fenced-commit';
import type { ActualInstance } from '../../../protocol';

/** Only the fields the collectors read; the rest of a record does not matter to them. */
function service(name: string, epoch: number, instances: Array<[string, string, 'primary' | 'replica']>) {
  return {
    name,
    epoch,
    instances: instances.map(([id, cell, role]) => ({ id, cell, role })),
  } as unknown as ServiceRecord;
}

function actual(instanceId: string, over: Partial<ActualInstance>): ActualInstance {
  return {
    instanceId,
    service: 'db',
    state: 'running',
    healthy: true,
    positionValue: null,
    ...over,
  } as ActualInstance;
}

function cell(name: string, alive: boolean, instances: ActualInstance[]): CellSnapshot {
  return { name, alive, record: null, actual: new Map(instances.map((a) => [a.instanceId, a])) };
}

/** The value of one sample line of a metric with exactly these labels, or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    const want = Object.entries(labels);
    if (want.length === Object.keys(got).length && want.every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe('ControlMetrics', function () {
  it('shows health, replication lag and epochs from one read per scrape', async function () {
    const metrics = new ControlMetrics();
    let reads = 0;
    const source: InstanceSource = {
      services: async () => {
        reads += 1;
        return [
          service('db', 7, [
            ['db-0', 'c1', 'primary'],
            ['db-1', 'c2', 'replica'],
            ['db-2', 'c3', 'replica'],
          ]),
        ];
      },
      cells: async () =>
        new Map([
          ['c1', cell('c1', true, [actual('db-0', { positionValue: '5000' })])],
          ['c2', cell('c2', true, [actual('db-1', { positionValue: '4200', degraded: 'no sync standby' })])],
          // A dead cell's last report does not count as healthy.
          ['c3', cell('c3', false, [actual('db-2', { positionValue: '5000' })])],
        ]),
    };
    metrics.watchInstances(source);
    const text = await metrics.registry.metrics();
    expect(reads).to.equal(1);
    expect(sample(text, 'sf_service_epoch', { service: 'db' })).to.equal(7);
    const healthy = (instance: string, c: string, role: string) =>
      sample(text, 'sf_service_instance_healthy', { service: 'db', instance, cell: c, role });
    expect(healthy('db-0', 'c1', 'primary')).to.equal(1);
    expect(healthy('db-1', 'c2', 'replica')).to.equal(0);
    expect(healthy('db-2', 'c3', 'replica')).to.equal(0);
    expect(sample(text, 'sf_service_replication_lag_bytes', { service: 'db', instance: 'db-1', cell: 'c2' })).to.equal(
      800,
    );
    // A replica ahead of what the primary last reported shows no negative lag.
    expect(sample(text, 'sf_service_replication_lag_bytes', { service: 'db', instance: 'db-2', cell: 'c3' })).to.equal(
      0,
    );
  });

  it('drops instances of services that are gone at the next scrape', async function () {
    const metrics = new ControlMetrics();
    let list = [service('a', 1, [['a-0', 'c1', 'primary']]), service('b', 2, [['b-0', 'c1', 'primary']])];
    metrics.watchInstances({
      services: async () => list,
      cells: async () => new Map([['c1', cell('c1', true, [actual('a-0', {}), actual('b-0', {})])]]),
    });
    expect(sample(await metrics.registry.metrics(), 'sf_service_epoch', { service: 'b' })).to.equal(2);
    list = [list[0]];
    const text = await metrics.registry.metrics();
    expect(sample(text, 'sf_service_epoch', { service: 'b' })).to.equal(undefined);
    expect(sample(text, 'sf_service_epoch', { service: 'a' })).to.equal(1);
  });

  it('counts each fencing operation once and every step with its outcome and duration', async function () {
    const metrics = new ControlMetrics();
    const recorded: FencingStep[] = [];
    const history: FencingHistoryLike = {
      list: async () => recorded,
      record: async (_fence, op, input) => {
        const step = { ...op, ...input, at: Date.now(), leaderToken: 1 } as FencingStep;
        recorded.push(step);
        return step;
      },
    };
    const wrapped = metrics.observeFencing(history);
    const fence = {} as LeaderFence;
    const op = { operation: 'op-1', trigger: 'instance-failed', service: 'db' };
    await wrapped.record(fence, op, { step: 'route-fence', outcome: 'ok', epoch: 3, message: '', durationMs: 20 });
    await wrapped.record(fence, op, { step: 'shoot', outcome: 'failed', epoch: 3, message: 'x', durationMs: 1500 });
    await wrapped.record(
      fence,
      { ...op, operation: 'op-2', trigger: 'operator-fence' },
      {
        step: 'route-fence',
        outcome: 'ok',
        epoch: 4,
        message: '',
      },
    );
    expect(recorded).to.have.length(3);
    const text = await metrics.registry.metrics();
    expect(sample(text, 'sf_control_fencing_operations_total', { trigger: 'instance-failed' })).to.equal(1);
    expect(sample(text, 'sf_control_fencing_operations_total', { trigger: 'operator-fence' })).to.equal(1);
    expect(sample(text, 'sf_control_fencing_steps_total', { step: 'route-fence', outcome: 'ok' })).to.equal(2);
    expect(sample(text, 'sf_control_fencing_steps_total', { step: 'shoot', outcome: 'failed' })).to.equal(1);
    // Only steps with a duration are timed: one route-fence, one shoot.
    expect(sample(text, 'sf_control_fencing_step_duration_seconds_count', { step: 'route-fence' })).to.equal(1);
    expect(sample(text, 'sf_control_fencing_step_duration_seconds_sum', { step: 'shoot' })).to.equal(1.5);
  });

  it('tracks passes and leadership', async function () {
    const metrics = new ControlMetrics();
    metrics.observePass(0.02, true);
    metrics.observePass(0.5, false);
    metrics.leaderChanged(true);
    let text = await metrics.registry.metrics();
    expect(sample(text, 'sf_control_reconcile_passes_total', { outcome: 'ok' })).to.equal(1);
    expect(sample(text, 'sf_control_reconcile_passes_total', { outcome: 'failed' })).to.equal(1);
    expect(sample(text, 'sf_control_reconcile_duration_seconds_count', {})).to.equal(2);
    expect(sample(text, 'sf_control_leader', {})).to.equal(1);
    metrics.leaderChanged(false);
    text = await metrics.registry.metrics();
    expect(sample(text, 'sf_control_leader', {})).to.equal(0);
    expect(sample(text, 'sf_control_leader_changes_total', { change: 'elected' })).to.equal(1);
    expect(sample(text, 'sf_control_leader_changes_total', { change: 'demoted' })).to.equal(1);
  });
});
