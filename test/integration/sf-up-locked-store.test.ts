/**
 * `sf up` with its locked state store, as real processes: the platform works
 * with every role on its own ACL user, nobody gets in without credentials, and no password shows
 * in argv, environments, logs or API bodies.
 */
import { execFile } from 'node:child_process';
import { copyFile, chmod, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { readRedisCredentialsFile } from '../../common/redis-credentials';
import { adminTokenFile, controlUrlForListen, readAdminTokenFile } from '../../control/admin-token';
import { freePort } from '../helpers/free-port';
import { runSf, runSfToExit, waitForHealth, routerAdminJson } from '../helpers/sf-process';
import { createUpPlatform, redisThrough, type UpPlatform } from '../helpers/sf-up-platform';
import { eventually } from '../helpers/tcp-client';

const run = promisify(execFile);

describe('sf up: locked state store', function () {
  this.timeout(180_000);
  let platform: UpPlatform;
  let credDir: string;
  const passwords = new Map<string, string>();

  before(async () => {
    platform = await createUpPlatform(2);
    await platform.start();
    credDir = path.join(platform.dataDir, 'state-store', 'credentials');
    for (const f of await readdir(credDir)) {
      const c = await readRedisCredentialsFile(path.join(credDir, f));
      passwords.set(c.username!, c.password);
    }
  });

  after(async () => {
    await platform.cleanup();
  });

  it('gives every role its own user, in 0600 files of a 0700 directory', async () => {
    expect([...passwords.keys()].sort()).to.deep.equal(['admin', 'cell-cell-1', 'cell-cell-2', 'control', 'router']);
    expect((await stat(credDir)).mode & 0o777).to.equal(0o700);
    expect((await stat(path.join(platform.dataDir, 'redis'))).mode & 0o777, 'the AOF directory').to.equal(0o700);
    for (const f of await readdir(credDir)) expect((await stat(path.join(credDir, f))).mode & 0o777).to.equal(0o600);
  });

  it('answers NOAUTH to a local unprivileged user with the port and no credentials', async function () {
    if (process.getuid?.() !== 0) this.skip(); // runuser needs root: skipped when the suite is not root
    const port = String(platform.ports.redis);
    for (const cmd of [
      ['HSET', 'sf:tokens', 'x', '{"name":"evil","scopes":["admin"]}'],
      ['HSET', 'sf:cell:cell-1:desired', 'x', '{}'],
      ['INCR', 'sf:rg:{default}:version'],
    ]) {
      const res = await run('runuser', ['-u', 'nobody', '--', 'redis-cli', '-p', port, ...cmd]);
      expect(res.stdout + res.stderr, cmd.join(' ')).to.match(/NOAUTH/);
    }
  });

  it('creates a redis service and writes through the router with the ACLs on', async () => {
    const created = await platform.sf(['create-service', 'redis', 'cache', '--replicas', '1', '--wait', '--json']);
    expect(created.code, created.output).to.equal(0);
    const { port } = await platform.service('cache');
    // The service itself answers only with a key.
    const key = await platform.serviceKey('cache');
    // --wait returned once every router serves the route with its TLS: the first write is served.
    expect(await redisThrough(port, key, 'SET', 'hello', 'world')).to.equal('OK');
    expect(await redisThrough(port, key, 'GET', 'hello')).to.equal('world');
  });

  it('keeps every password out of argv, environments, logs and API bodies', async () => {
    // ps runs with no password in its own argv, so whatever matches is some other process's.
    const { stdout: ps } = await run('ps', ['-eo', 'args']);
    const environ: string[] = [];
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      environ.push(await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => ''));
    }
    const logDir = path.join(platform.dataDir, 'logs');
    const logs = await Promise.all((await readdir(logDir)).map((f) => readFile(path.join(logDir, f), 'utf8')));
    const token = (await readFile(adminTokenFile(platform.env.SF_CONTROL_URL!, platform.env), 'utf8')).trim();
    const headers = { authorization: `Bearer ${token}` };
    const api = await Promise.all(
      ['/v3/info', '/v3/cells', '/v3/service_instances', '/routing/v1/router_groups'].map(async (p) =>
        (await platform.controlFetch(p, { headers })).text(),
      ),
    );
    expect(ps).to.include('--redis-credentials');
    for (const [user, password] of passwords) {
      expect(ps, `${user}'s password in ps`).to.not.include(password);
      expect(
        environ.some((e) => e.includes(password)),
        `${user}'s password in an environment`,
      ).to.equal(false);
      expect(
        logs.some((l) => l.includes(password)),
        `${user}'s password in a log`,
      ).to.equal(false);
      expect(
        api.some((b) => b.includes(password)),
        `${user}'s password in an API body`,
      ).to.equal(false);
    }
  });

  it('runs another router from SF_REDIS_CREDENTIALS_FILE, and refuses a file others can read', async () => {
    const admin = await freePort();
    const env = {
      ...platform.env,
      SF_REDIS_URL: `redis://127.0.0.1:${platform.ports.redis}`,
      SF_REDIS_CREDENTIALS_FILE: path.join(credDir, 'router.json'),
    };
    const router = runSf(
      ['router', '--router-group', 'default', '--admin', `127.0.0.1:${admin}`, '--bind', '127.0.0.2'],
      env,
    );
    try {
      await waitForHealth(admin, 20_000);
      // Without SF_API_TOKEN the router wrote its admin token to the file named after its address.
      const lockedToken = (await readAdminTokenFile(controlUrlForListen('127.0.0.1', admin), env)) ?? '';
      const { port } = await platform.service('cache');
      await eventually(
        async () => {
          const table = (await routerAdminJson(admin, '/routes', lockedToken)) as {
            routes: Array<{ port: number }>;
          };
          return table.routes.some((r) => r.port === port);
        },
        10_000,
        'the second router serves the cache route',
      );
    } finally {
      await router.stop();
    }

    const open = path.join(platform.home, 'router-open.json');
    await copyFile(path.join(credDir, 'router.json'), open);
    await chmod(open, 0o644);
    const refused = await runSfToExit(
      ['router', '--redis-credentials', open, '--router-group', 'default', '--admin', `127.0.0.1:${await freePort()}`],
      env,
    );
    expect(refused.code).to.equal(2);
    expect(refused.output.trim().split('\n')).to.have.length(1);
    expect(refused.output).to.match(/mode 0644 lets group or others read it/);
    expect(refused.output).to.not.include(passwords.get('router')!);
  });
});
