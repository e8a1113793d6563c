import { expect } from 'chai';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

describe('service instances API: validation', function () {
  this.timeout(60_000);
  let cluster: ServiceCluster;
  before(async () => {
    cluster = await startServiceCluster({ cells: 2, capacityMb: 1000 });
  });
  after(async () => {
    await cluster?.stop();
  });

  const cases: Array<[string, unknown, string]> = [
    ['an unknown engine', { name: 'a', engine: 'mysql' }, 'engine'],
    ['a bad name', { name: 'Bad_Name', engine: 'redis' }, 'name'],
    ['a missing name', { engine: 'redis' }, 'name'],
    ['negative replicas', { name: 'a', engine: 'redis', replicas: -1 }, 'replicas'],
    ['fractional replicas', { name: 'a', engine: 'redis', replicas: 1.5 }, 'replicas'],
    ['a bad durability', { name: 'a', engine: 'redis', durability: 'maybe' }, 'durability'],
    ['a zero volume', { name: 'a', engine: 'redis', volume: { size_mb: 0 } }, 'volume.size_mb'],
    [
      'a zero volume in the older sizeMb spelling',
      { name: 'a', engine: 'redis', volume: { sizeMb: 0 } },
      'volume.size_mb',
    ],
    ['a name ending in -', { name: 'x-', engine: 'redis' }, 'name'],
    ['a bad fencing policy', { name: 'a', engine: 'redis', fencing: { policy: 'sometimes' } }, 'fencing.policy'],
    ['an unknown field', { name: 'a', engine: 'redis', color: 'red' }, ''],
    ['tcp without a command', { name: 'a', engine: 'tcp' }, 'command'],
  ];
  for (const [what, body, field] of cases) {
    it(`answers 400 naming the field for ${what}`, async () => {
      const res = await cluster.api<ErrorBody>('POST', '/v3/service_instances', body);
      expect(res.status).to.equal(400);
      expect(res.body.error.code).to.equal('SF_ERR_INVALID_REQUEST');
      if (field) expect(res.body.error.field).to.equal(field);
    });
  }

  it('answers 400 for an unknown router group', async () => {
    const res = await cluster.api<ErrorBody>('POST', '/v3/service_instances', {
      name: 'a',
      engine: 'redis',
      router_group: 'nope',
    });
    expect(res.status).to.equal(400);
    expect(res.body.error.field).to.equal('router_group');
  });

  it('answers 422 at once when placement cannot be satisfied', async () => {
    const t0 = Date.now();
    const tooMany = await cluster.api<ErrorBody>('POST', '/v3/service_instances', {
      name: 'wide',
      engine: 'redis',
      replicas: 2,
    });
    expect(tooMany.status).to.equal(422);
    expect(tooMany.body.error.code).to.equal('SF_ERR_PLACEMENT_UNSATISFIABLE');
    expect(tooMany.body.error.message).to.match(/needs 3 cells/);
    const tooBig = await cluster.api<ErrorBody>('POST', '/v3/service_instances', {
      name: 'big',
      engine: 'redis',
      replicas: 0,
      volume: { sizeMb: 5000 },
    });
    expect(tooBig.status).to.equal(422);
    expect(tooBig.body.error.message).to.match(/not enough free capacity/);
    expect(Date.now() - t0).to.be.below(2_000);
    expect((await cluster.api('GET', '/v3/service_instances/wide')).status).to.equal(404);
  });

  it('answers 409 for a duplicate name and 404 for an unknown service', async () => {
    expect(
      (
        await cluster.api('POST', '/v3/service_instances', {
          name: 'dup',
          engine: 'redis',
          replicas: 0,
          volume: { sizeMb: 16 },
        })
      ).status,
    ).to.equal(201);
    const dup = await cluster.api<ErrorBody>('POST', '/v3/service_instances', {
      name: 'dup',
      engine: 'redis',
      replicas: 0,
      volume: { sizeMb: 16 },
    });
    expect(dup.status).to.equal(409);
    expect(dup.body.error.code).to.equal('SF_ERR_SERVICE_EXISTS');
    expect((await cluster.api<ErrorBody>('GET', '/v3/service_instances/ghost')).status).to.equal(404);
    expect((await cluster.api<ErrorBody>('DELETE', '/v3/service_instances/ghost')).status).to.equal(404);
  });

  it('needs a token with the write scope to create', async () => {
    expect((await cluster.api('POST', '/v3/service_instances', { name: 'x', engine: 'redis' }, null)).status).to.equal(
      401,
    );
    expect((await cluster.api('GET', '/v3/cells', undefined, null)).status).to.equal(401);
  });
});
