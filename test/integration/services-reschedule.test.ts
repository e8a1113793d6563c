import { expect } from 'chai';
import type { ServiceView } from '../../control/services';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';

describe('convergence: lost cells', function () {
  this.timeout(120_000);
  let cluster: ServiceCluster;

  before(async () => {
    cluster = await startServiceCluster({ cells: 3 });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('re-creates the replicas of a killed cell on another cell', async () => {
    await cluster.api('POST', '/v3/service_instances', { name: 'kv', engine: 'redis', replicas: 1, volume: { sizeMb: 64 } });
    const before = await cluster.waitForService('kv');
    const replica = before.instances.find((i) => i.role === 'replica')!;
    const victim = cluster.cells.find((c) => c.name === replica.cell)!;
    const t0 = performance.now();
    victim.proc.child.kill('SIGKILL');

    const after = await cluster.waitForService('kv', 30_000, (v) => v.status === 'running' && !v.instances.some((i) => i.cell === victim.name));
    console.log(`      replica re-created and running ${(performance.now() - t0).toFixed(0)} ms after the cell was killed`);
    const fresh = after.instances.find((i) => i.role === 'replica')!;
    expect(fresh.id).to.not.equal(replica.id);
    expect(fresh.cell).to.not.equal(victim.name);
    expect(fresh.cell).to.not.equal(after.instances.find((i) => i.role === 'primary')!.cell);
    const events = await cluster.api<{ resources: Array<{ type: string; instanceId?: string }> }>('GET', '/v3/service_instances/kv/events');
    expect(events.body.resources.some((e) => e.type === 'instance-removed' && e.instanceId === replica.id)).to.equal(true);
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
