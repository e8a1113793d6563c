import { expect } from 'chai';
import type { ServiceView } from '../../control/services';
import { useServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { firstWrite } from '../helpers/redis-client';
import { serviceKey } from '../helpers/service-key';

/**
 * One installation under a non-default key prefix: control, the router and every cell must meet
 * under the same names (a cell once hard-coded `sf:` and never saw control's orders).
 */
describe('key prefix', function () {
  this.timeout(120_000);
  const running = useServiceCluster({ cells: 2, keyPrefix: 'acme:' });
  let cluster: ServiceCluster;
  beforeEach(() => {
    cluster = running();
  });

  it('lets a control, a router and cells with a non-default prefix find each other', async () => {
    const cells = await cluster.api<{ resources: Array<{ name: string; alive: boolean }> }>('GET', '/v3/cells');
    expect(cells.status).to.equal(200);
    expect(cells.body.resources.filter((c) => c.alive).map((c) => c.name)).to.have.members(['cell-1', 'cell-2']);

    const created = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
      name: 'prefixed',
      engine: 'redis',
      replicas: 1,
      durability: 'async',
      volume: { sizeMb: 64 },
    });
    expect(created.status).to.equal(201);
    await cluster.waitForService('prefixed');
    // Nothing answers without credentials; the key goes through the prefixed store too.
    const client = await firstWrite(created.body.port, 30_000, await serviceKey(cluster.api, 'prefixed'));
    try {
      expect(await client.get('greeting')).to.equal('hello');
    } finally {
      client.disconnect();
    }

    const keys = await cluster.state.keys('*');
    expect(keys.filter((k) => !k.startsWith('acme:'))).to.deep.equal([]);
    expect(await cluster.state.smembers('acme:cells')).to.have.members(['cell-1', 'cell-2']);
  });
});
