import { expect } from 'chai';
import { type ActualInstance } from '../../protocol/cell-protocol';
import { DegradedFailoverCoordinator } from '../../control/services';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { eventually } from '../helpers/tcp-client';
import { keyLayout } from '../../protocol/keys';

const KEYS = keyLayout();

describe('convergence: lost cells', function () {
  this.timeout(120_000);
  let cluster: ServiceCluster;

  before(async () => {
    // The report-only coordinator: this suite checks convergence without failover (fencing has its own suites).
    // A replaced replica's volume is kept for hours by default (it may be the only copy left);
    // here it may go as soon as its cell is back, so the collection itself can be tested.
    cluster = await startServiceCluster({
      cells: 3,
      services: {
        failoverCoordinator: new DegradedFailoverCoordinator(),
        reconciler: { replacedVolumeRetentionMs: 0 },
      },
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('restarts a replica whose process died, in place, with its volume', async () => {
    await cluster.api('POST', '/v3/service_instances', {
      name: 'bounce',
      engine: 'redis',
      replicas: 1,
      volume: { sizeMb: 32 },
    });
    const view = await cluster.waitForService('bounce');
    const replica = view.instances.find((i) => i.role === 'replica')!;
    const actual = JSON.parse(
      (await cluster.state.hget(KEYS.cell(replica.cell).actual, replica.id))!,
    ) as ActualInstance;
    process.kill(actual.pid!, 'SIGKILL');
    await eventually(
      async () => {
        const events = await cluster.api<{ resources: Array<{ type: string; instance_id: string | null }> }>(
          'GET',
          '/v3/service_instances/bounce/events',
        );
        return events.body.resources.some((e) => e.type === 'instance-restarted' && e.instance_id === replica.id);
      },
      20_000,
      'replica restart decided',
    );
    const back = await cluster.waitForService(
      'bounce',
      30_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.state === 'running'),
    );
    expect(back.instances.find((i) => i.role === 'replica')!.id).to.equal(replica.id);
    const now = JSON.parse((await cluster.state.hget(KEYS.cell(replica.cell).actual, replica.id))!) as ActualInstance;
    expect(now.pid).to.not.equal(actual.pid);
    expect(now.generation).to.equal(1);
    expect((await cluster.api('DELETE', '/v3/service_instances/bounce')).status).to.equal(202);
    await eventually(
      async () => (await cluster.api('GET', '/v3/service_instances/bounce')).status === 404,
      30_000,
      'bounce deleted',
    );
  });

  it('re-creates the replicas of a killed cell on another cell', async () => {
    await cluster.api('POST', '/v3/service_instances', {
      name: 'kv',
      engine: 'redis',
      replicas: 1,
      volume: { sizeMb: 64 },
    });
    const before = await cluster.waitForService('kv');
    const replica = before.instances.find((i) => i.role === 'replica')!;
    const victim = cluster.cells.find((c) => c.name === replica.cell)!;
    const t0 = performance.now();
    victim.proc.child.kill('SIGKILL');

    const after = await cluster.waitForService(
      'kv',
      30_000,
      (v) => v.status === 'running' && !v.instances.some((i) => i.cell === victim.name),
    );
    console.log(
      `      replica re-created and running ${(performance.now() - t0).toFixed(0)} ms after the cell was killed`,
    );
    const fresh = after.instances.find((i) => i.role === 'replica')!;
    expect(fresh.id).to.not.equal(replica.id);
    expect(fresh.cell).to.not.equal(victim.name);
    expect(fresh.cell).to.not.equal(after.instances.find((i) => i.role === 'primary')!.cell);
    const events = await cluster.api<{ resources: Array<{ type: string; instance_id: string | null }> }>(
      'GET',
      '/v3/service_instances/kv/events',
    );
    expect(events.body.resources.some((e) => e.type === 'instance-removed' && e.instance_id === replica.id)).to.equal(
      true,
    );
  });

  it('deletes the replaced replica volume when its cell comes back and the retention has passed', async () => {
    const view = await cluster.waitForService('kv');
    const dead = cluster.cells.find((c) => c.proc.child.signalCode === 'SIGKILL')!;
    await cluster.startCell(dead.name, dead.zone);
    await eventually(
      async () => {
        const cells = await cluster.api<{ resources: Array<{ name: string; alive: boolean; instances: unknown[] }> }>(
          'GET',
          '/v3/cells',
        );
        const back = cells.body.resources.find((c) => c.name === dead.name)!;
        return back.alive && back.instances.length === 0;
      },
      30_000,
      'orphaned volume collected',
    );
    const after = await cluster.waitForService('kv');
    expect(after.instances.map((i) => i.id)).to.deep.equal(view.instances.map((i) => i.id));
  });

  it('reports a service degraded when its primary cell dies, without promoting anything', async () => {
    const view = await cluster.waitForService('kv');
    const primary = view.instances.find((i) => i.role === 'primary')!;
    cluster.cells.find((c) => c.name === primary.cell)!.proc.child.kill('SIGKILL');
    const degraded = await cluster.waitForService('kv', 30_000, (v) => v.status === 'degraded');
    expect(degraded.message).to.match(/primary .* is lost/);
    expect(degraded.instances.find((i) => i.id === primary.id)?.role).to.equal('primary');
    expect(degraded.instances.find((i) => i.id === primary.id)?.state).to.equal('lost');
    const cells = await cluster.api<{ resources: Array<{ name: string; alive: boolean }> }>('GET', '/v3/cells');
    expect(cells.body.resources.find((c) => c.name === primary.cell)?.alive).to.equal(false);
  });
});
