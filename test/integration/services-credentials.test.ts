/**
 * A client without credentials gets NOAUTH from Redis and a password
 * failure from PostgreSQL through the router; with a service key both work; after the key is
 * deleted the same key fails at once, and its open sessions are closed. Every part real.
 */
import { execFile } from 'node:child_process';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { runSfToExit } from '../helpers/sf-process';
import { ADMIN_TOKEN } from '../helpers/control-harness';

const PSQL = '/usr/lib/postgresql/15/bin/psql';

interface KeyBody {
  name: string;
  uri: string;
  host: string;
  port: number;
  username: string;
  password: string;
  database?: string;
}

function psql(port: number, user: string, password: string | undefined, sql: string): Promise<string> {
  return new Promise((resolve) => {
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', PGCONNECT_TIMEOUT: '5' };
    if (password !== undefined) env.PGPASSWORD = password;
    execFile(
      PSQL,
      ['-h', '127.0.0.1', '-p', String(port), '-U', user, '-d', 'postgres', '-w', '-XAtq', '-c', sql],
      { env, timeout: 30_000 },
      (err, stdout, stderr) => resolve(err ? `ERROR ${stderr || err.message}` : stdout.trim()),
    );
  });
}

function redisClient(port: number, auth?: { username: string; password: string }): Redis {
  const client = new Redis({
    port,
    host: '127.0.0.1',
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableReadyCheck: false,
    // Only the credentials: a key also carries `tls` (the policy) and other fields ioredis reads.
    ...(auth ? { username: auth.username, password: auth.password } : {}),
  });
  client.on('error', () => undefined);
  return client;
}

describe('service credentials and service keys', function () {
  this.timeout(240_000);
  let cluster: ServiceCluster;
  const clients: Redis[] = [];
  before(async () => {
    cluster = await startServiceCluster({ cells: 2 });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  it('redis: NOAUTH without credentials, a key works on primary and replica, a deleted key fails at once', async () => {
    expect(
      (await cluster.api('POST', '/v3/service_instances', { name: 'cache', engine: 'redis', replicas: 1 })).status,
    ).to.equal(201);
    const view = await cluster.waitForService('cache', 60_000);

    const anonymous = redisClient(view.port);
    clients.push(anonymous);
    expect(await anonymous.ping().catch((err: Error) => err.message)).to.match(/NOAUTH/);

    const created = await cluster.api<KeyBody>('POST', '/v3/service_instances/cache/keys', { name: 'app' });
    expect(created.status, JSON.stringify(created.body)).to.equal(201);
    expect(created.body).to.include({ host: '127.0.0.1', port: view.port, username: 'key-app' });
    expect(created.body.uri).to.equal(`redis://key-app:${created.body.password}@127.0.0.1:${view.port}`);
    const shown = await cluster.api<KeyBody>('GET', '/v3/service_instances/cache/keys/app');
    expect(shown.body.password).to.equal(created.body.password);

    const app = redisClient(view.port, created.body);
    clients.push(app);
    expect(await app.set('k', 'v')).to.equal('OK');
    // The replica has the key's user too (Redis ACLs do not replicate; every instance gets them).
    const replica = view.instances.find((i) => i.role === 'replica');
    const onReplica = redisClient(replica?.port as number, created.body);
    clients.push(onReplica);
    expect(await onReplica.get('k')).to.be.oneOf(['v', null]);

    // Nothing but the key endpoint carries the password.
    for (const path of [
      '/v3/service_instances',
      '/v3/service_instances/cache',
      '/v3/service_instances/cache/events',
      '/v3/service_instances/cache/keys',
    ]) {
      expect(JSON.stringify((await cluster.api(path.endsWith('keys') ? 'GET' : 'GET', path)).body)).to.not.contain(
        created.body.password,
      );
    }

    const t0 = Date.now();
    expect((await cluster.api('DELETE', '/v3/service_instances/cache/keys/app')).status).to.equal(204);
    console.log(`      redis: delete-service-key answered in ${Date.now() - t0} ms`);
    // Revoked on the engine by the time the answer came: the open connection is closed, a new one refused.
    expect(await app.get('k').catch((err: Error) => err.message)).to.not.equal('v');
    const again = redisClient(view.port, created.body);
    clients.push(again);
    expect(await again.ping().catch((err: Error) => err.message)).to.match(/WRONGPASS|invalid username/);
    expect((await cluster.api('GET', '/v3/service_instances/cache/keys/app')).status).to.equal(404);
  });

  it('postgres: a password failure without credentials, a key works, a deleted key fails at once', async () => {
    expect(
      (
        await cluster.api('POST', '/v3/service_instances', {
          name: 'db',
          engine: 'postgres',
          replicas: 1,
          durability: 'sync',
        })
      ).status,
    ).to.equal(201);
    const t0 = Date.now();
    const view = await cluster.waitForService('db', 120_000);
    console.log(`      postgres: service running after ${Date.now() - t0} ms`);
    expect(await psql(view.port, 'postgres', undefined, 'select 1')).to.match(/no password supplied/);
    expect(await psql(view.port, 'postgres', 'guess', 'select 1')).to.match(/password authentication failed/);

    const t1 = Date.now();
    const created = await cluster.api<KeyBody>('POST', '/v3/service_instances/db/keys', { name: 'app' });
    console.log(`      postgres: create-service-key answered in ${Date.now() - t1} ms`);
    expect(created.status, JSON.stringify(created.body)).to.equal(201);
    expect(created.body).to.include({ port: view.port, username: 'key-app', database: 'postgres' });
    const { username, password } = created.body;
    // A sync commit: acknowledged by the replica, which connects as the replication user.
    expect(
      await psql(
        view.port,
        username,
        password,
        'create table t (v int); insert into t values (1); select count(*) from t',
      ),
    ).to.equal('1');
    expect(
      await psql(view.port, username, password, 'select rolsuper from pg_roles where rolname = current_user'),
    ).to.equal('f');

    // A second key sees the first one's table: client objects belong to the service's group role.
    const other = await cluster.api<KeyBody>('POST', '/v3/service_instances/db/keys', { name: 'reporting' });
    expect(await psql(view.port, other.body.username, other.body.password, 'select count(*) from t')).to.equal('1');

    // Through the CLI, as an operator would.
    const t2 = Date.now();
    const cli = await runSfToExit(['delete-service-key', 'db', 'app', '--json'], {
      SF_CONTROL_URL: cluster.controls[0].control.url,
      SF_API_TOKEN: ADMIN_TOKEN,
    });
    expect(cli.code, cli.output).to.equal(0);
    console.log(`      postgres: sf delete-service-key (a CLI process) took ${Date.now() - t2} ms`);
    expect(await psql(view.port, username, password, 'select 1')).to.match(/password authentication failed/);
    expect(await psql(view.port, other.body.username, other.body.password, 'select count(*) from t')).to.equal('1');
  });

  it('refuses keys for tcp services and duplicate names', async () => {
    const dup = await cluster.api<{ error: { code: string } }>('POST', '/v3/service_instances/db/keys', {
      name: 'reporting',
    });
    expect(dup.status).to.equal(409);
    expect(dup.body.error.code).to.equal('SF_ERR_SERVICE_KEY_EXISTS');
    const bad = await cluster.api<{ error: { field: string } }>('POST', '/v3/service_instances/db/keys', {
      name: 'No Spaces',
    });
    expect(bad.status).to.equal(400);
    expect(bad.body.error.field).to.equal('name');
  });
});
