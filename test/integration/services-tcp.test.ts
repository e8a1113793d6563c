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

  it('refuses a tcp service to a write token: running a command needs admin scope', async () => {
    const token = await cluster.api<{ token: string }>('POST', '/v3/tokens', { name: 'writer', scopes: ['write'] });
    expect(token.status).to.equal(201);
    const refused = await cluster.api<{ error: { code: string; field: string } }>(
      'POST',
      '/v3/service_instances',
      { name: 'shell', engine: 'tcp', replicas: 0, command: { file: '/bin/sh', args: ['-c', 'id'] } },
      token.body.token,
    );
    expect(refused.status).to.equal(403);
    expect(refused.body.error).to.include({ code: 'SF_ERR_FORBIDDEN', field: 'engine' });
    expect((await cluster.api('GET', '/v3/service_instances/shell')).status).to.equal(404);
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
