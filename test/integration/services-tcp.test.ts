import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { ServiceView } from '../../control/services';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';

describe('service instances: tcp engine', function () {
  this.timeout(60_000);
  let cluster: ServiceCluster;
  before(async () => {
    cluster = await startServiceCluster({ cells: 1 });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('runs any command listening on {port} behind the router', async () => {
    const created = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
      name: 'plain',
      engine: 'tcp',
      replicas: 0,
      volume: { sizeMb: 16 },
      command: {
        file: 'redis-server',
        args: ['--port', '{port}', '--bind', '{host}', '--dir', '{dataDir}', '--save', ''],
      },
    });
    expect(created.status).to.equal(201);
    const view = await cluster.waitForService('plain', 30_000);
    expect(view.instances).to.have.length(1);
    const client = new Redis({ port: view.port, host: '127.0.0.1', maxRetriesPerRequest: 3 });
    try {
      expect(await client.ping()).to.equal('PONG');
    } finally {
      client.disconnect();
    }
  });
});
