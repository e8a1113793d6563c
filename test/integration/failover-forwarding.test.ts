/**
 * An operator action sent to a standby control is forwarded to the leader (which
 * publishes its API address next to its lock) instead of answering 503.
 */
import { expect } from 'chai';
import type { FencingStepView as FencingStep } from '../../control';
import type { ServiceView } from '../../control/services';
import { primaryOf } from '../helpers/failover-support';
import { useServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { eventually } from '../helpers/tcp-client';

interface LeaderInfo {
  this_control: { id: string; leader: boolean };
}

describe('failover: actions on a standby control', function () {
  this.timeout(180_000);
  const running = useServiceCluster({ cells: 2, controls: 2 });
  let cluster: ServiceCluster;
  beforeEach(() => {
    cluster = running();
  });

  it('are forwarded to the leader: a switchover and a refusal answer as if sent to the leader', async () => {
    await cluster.api('POST', '/v3/service_instances', {
      name: 'fwd',
      engine: 'redis',
      replicas: 1,
      durability: 'async',
      volume: { sizeMb: 32 },
    });
    const view = await cluster.waitForService(
      'fwd',
      60_000,
      (v) => v.status === 'running' && v.instances.every((i) => i.state === 'running'),
    );
    const infos = await Promise.all(cluster.controls.map((c) => c.api<LeaderInfo>('GET', '/v3/leader')));
    const standby = cluster.controls[infos.findIndex((i) => !i.body.this_control.leader)];
    expect(standby, 'a standby control').to.not.equal(undefined);

    // The leader publishes its address within a second of its election.
    let res = await standby.api<{ steps: FencingStep[]; service: ServiceView; error?: { code: string } }>(
      'POST',
      '/v3/service_instances/fwd/actions/failover',
      {},
    );
    await eventually(
      async () => {
        if (res.status !== 503) return true;
        res = await standby.api('POST', '/v3/service_instances/fwd/actions/failover', {});
        return res.status !== 503;
      },
      5_000,
      'the standby forwards instead of answering 503',
    );
    expect(res.status, JSON.stringify(res.body)).to.equal(200);
    expect(res.body.steps.map((s) => s.step)).to.include.members(['route-fence', 'promote', 'publish']);
    expect(primaryOf(res.body.service).id).to.not.equal(primaryOf(view).id);
    expect(res.body.service.epoch).to.be.greaterThan(view.epoch);

    const bad = await standby.api<{ error: { code: string; field?: string } }>(
      'POST',
      '/v3/service_instances/fwd/actions/failover',
      { to: 'nosuch' },
    );
    expect(bad.status).to.equal(400);
    expect(bad.body.error).to.include({ code: 'SF_ERR_INVALID_FAILOVER_TARGET', field: 'to' });

    // The sender's credentials travel with the forwarded request: a bad token stays refused.
    const anon = await standby.api('POST', '/v3/service_instances/fwd/actions/failover', {}, 'not-a-token');
    expect(anon.status).to.equal(401);
  });
});
