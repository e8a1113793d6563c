import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import type { ServiceView } from '../../control/services';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';

const run = promisify(execFile);

/** The service key the test connects with (no connection without a password). */
let key: ServiceKeyAuth;

async function psql(port: number, sql: string): Promise<string> {
  const { stdout } = await run(
    'psql',
    ['-h', '127.0.0.1', '-p', String(port), '-U', key.username, '-d', 'postgres', '-w', '-At', '-c', sql],
    { timeout: 10_000, env: { PATH: process.env.PATH ?? '', PGPASSWORD: key.password } },
  );
  return stdout.trim();
}

describe('service instances: postgres', function () {
  this.timeout(180_000);
  let cluster: ServiceCluster;

  before(async () => {
    cluster = await startServiceCluster({ cells: 2 });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('runs psql through the router port against the primary, and streams to the replica', async () => {
    const t0 = performance.now();
    const created = await cluster.api<ServiceView>('POST', '/v3/service_instances', {
      name: 'db',
      engine: 'postgres',
      replicas: 1,
      durability: 'sync',
      volume: { sizeMb: 128 },
    });
    expect(created.status).to.equal(201);
    key = await serviceKey(cluster.api, 'db');
    const port = created.body.port;
    let firstQueryMs: number;
    const deadline = Date.now() + 120_000;
    for (;;) {
      try {
        if ((await psql(port, 'select 1')) === '1') {
          firstQueryMs = performance.now() - t0;
          break;
        }
      } catch {
        // Not serving yet.
      }
      if (Date.now() > deadline) throw new Error('psql through the router never succeeded');
      await new Promise((r) => setTimeout(r, 100));
    }
    console.log(`      postgres create-to-first-query through the router: ${firstQueryMs.toFixed(0)} ms`);

    const view = await cluster.waitForService('db', 120_000);
    expect(view.instances.map((i) => i.role).sort()).to.deep.equal(['primary', 'replica']);
    expect(await psql(port, 'select pg_is_in_recovery()')).to.equal('f');
    // Sync durability with a replica: the primary waits for the standby on commit.
    await psql(port, "create table t (v text); insert into t values ('x')");
    const replica = view.instances.find((i) => i.role === 'replica')!;
    expect(await psql(replica.port!, 'select pg_is_in_recovery()')).to.equal('t');
    expect(await psql(replica.port!, 'select v from t')).to.equal('x');
  });
});
