/**
 * Engines started with credentials answer nobody without them — Redis
 * `NOAUTH`, PostgreSQL a password failure — replicate with their own replication user, and follow
 * a changed set of users at once (a revoked user's session ends).
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { ProcessExecutor } from '../../cell/executor-process';
import { PostgresEngine } from '../../cell/engine-postgres';
import { RedisEngine } from '../../cell/engine-redis';
import type { InstanceCredentials } from '../../protocol';
import { eventually, spec, tempCellDir } from '../helpers/cell-harness';

const PSQL = '/usr/lib/postgresql/15/bin/psql';

function creds(version: number, users: string[]): InstanceCredentials {
  return {
    version,
    admin: { username: 'sf_admin', password: 'admin-password-0123456789' },
    replication: { username: 'sf_replication', password: 'replication-password-0123' },
    users: users.map((u) => ({ username: u, password: `${u}-password-0123456789` })),
  };
}

/** psql as a client would run it; resolves with stdout or the error text. */
function psql(port: number, user: string, password: string | undefined, sql: string): Promise<string> {
  return new Promise((resolve) => {
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', PGCONNECT_TIMEOUT: '5' };
    if (password !== undefined) env.PGPASSWORD = password;
    execFile(
      PSQL,
      ['-h', '127.0.0.1', '-p', String(port), '-U', user, '-d', 'postgres', '-w', '-XAtq', '-c', sql],
      { env, timeout: 20_000 },
      (err, stdout, stderr) => resolve(err ? `ERROR ${stderr || err.message}` : stdout.trim()),
    );
  });
}

describe('engine credentials', function () {
  this.timeout(180_000);
  let cell: { dir: string; remove(): Promise<void> };
  let executor: ProcessExecutor;
  const clients: Redis[] = [];

  beforeEach(async () => {
    cell = await tempCellDir('sf-creds-');
    executor = new ProcessExecutor({ dataDir: cell.dir, portRange: { from: 21000, to: 21999 } });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    for (const h of executor.handles()) await executor.kill(h.instanceId);
    await cell.remove();
  });

  function redis(port: number, user?: { username: string; password: string }): Redis {
    const c = new Redis({
      port,
      host: '127.0.0.1',
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      lazyConnect: true,
      ...(user ?? {}),
    });
    c.on('error', () => undefined);
    clients.push(c);
    return c;
  }

  it('redis: NOAUTH without credentials, a replica syncs as the replication user, users follow the set', async () => {
    const engine = new RedisEngine();
    const set = creds(1, ['key-a']);
    const primary = await executor.start(spec({ instanceId: 'r-0', engine: 'redis', credentials: set }));
    const anonymous = redis(primary.port);
    const refused = await anonymous.ping().catch((err: Error) => err.message);
    expect(refused).to.match(/NOAUTH/);
    const a = redis(primary.port, set.users[0]);
    expect(await a.set('k', 'v1')).to.equal('OK');
    // A client user has no administration: no CONFIG SET dir + SAVE to write files anywhere.
    expect(await a.call('CONFIG', 'SET', 'dir', '/tmp').catch((err: Error) => err.message)).to.match(/NOPERM/);
    // The replication user can do nothing but replicate.
    const repl = redis(primary.port, set.replication);
    expect(await repl.get('k').catch((err: Error) => err.message)).to.match(/NOPERM/);
    const conf = await readFile(path.join(primary.dataDir, 'users.acl'), 'utf8');
    expect(conf).to.not.contain(set.users[0].password);

    const replica = await executor.start(
      spec({
        instanceId: 'r-1',
        engine: 'redis',
        role: 'replica',
        replicaOf: { host: '127.0.0.1', port: primary.port },
        credentials: set,
      }),
    );
    const onReplica = redis(replica.port, set.users[0]);
    await eventually(async () => (await onReplica.get('k')) === 'v1', 10_000, 'replicated value');

    // Revoke key-a, add key-b: applied at once, key-a's open connection is closed.
    const next = creds(2, ['key-b']);
    await engine.applyCredentials({ ...primary.context, spec: { ...primary.context.spec, credentials: next } });
    expect(await a.get('k').catch((err: Error) => err.message)).to.not.equal('v1');
    const again = redis(primary.port, set.users[0]);
    expect(await again.ping().catch((err: Error) => err.message)).to.match(/WRONGPASS|invalid username/);
    expect(await redis(primary.port, next.users[0]).get('k')).to.equal('v1');
    // ACL SAVE: the change survives a restart.
    expect(await readFile(path.join(primary.dataDir, 'users.acl'), 'utf8')).to.not.match(/key-a/);
  });

  it('postgres: a password failure without credentials, SCRAM for clients and replication, a revoked role is gone', async () => {
    const engine = new PostgresEngine();
    const set = creds(1, ['key-a']);
    const primary = await executor.start(
      spec({ instanceId: 'p-0', engine: 'postgres', durability: 'sync', replicas: 1, credentials: set }),
    );
    await engine.applyCredentials(primary.context);
    const hba = await readFile(path.join(primary.dataDir, 'pg_hba.conf'), 'utf8');
    expect(hba).to.not.match(/\btrust\b/);
    expect(await psql(primary.port, 'postgres', undefined, 'select 1')).to.match(/no password supplied/);
    expect(await psql(primary.port, 'postgres', 'wrong-password', 'select 1')).to.match(
      /password authentication failed/,
    );
    const user = set.users[0];
    // A sync primary: this commit returns only once the replica, connected as sf_replication,
    // acknowledged it.
    const replica = await executor.start(
      spec({
        instanceId: 'p-1',
        engine: 'postgres',
        role: 'replica',
        replicaOf: { host: '127.0.0.1', port: primary.port },
        durability: 'sync',
        replicas: 1,
        credentials: set,
      }),
    );
    expect(
      await psql(
        primary.port,
        user.username,
        user.password,
        'create table t (v int); insert into t values (7); select v from t',
      ),
    ).to.equal('7');
    await eventually(
      async () => (await psql(replica.port, user.username, user.password, 'select v from t')) === '7',
      20_000,
      'replicated row',
    );
    // Client roles are not superusers and their objects belong to the clients' group.
    expect(
      await psql(
        primary.port,
        user.username,
        user.password,
        'select rolsuper from pg_roles where rolname = current_user',
      ),
    ).to.equal('f');
    expect(await psql(primary.port, user.username, user.password, "copy t to program 'env'")).to.match(/ERROR/);

    await engine.applyCredentials({
      ...primary.context,
      spec: { ...primary.context.spec, credentials: creds(2, ['key-b']) },
    });
    expect(await psql(primary.port, user.username, user.password, 'select 1')).to.match(
      /password authentication failed|does not exist/,
    );
    expect(await psql(primary.port, 'key-b', 'key-b-password-0123456789', 'select v from t')).to.equal('7');
  });
});
