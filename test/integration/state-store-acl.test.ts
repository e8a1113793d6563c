/**
 * The locked state store against a real redis-server started from the
 * configuration `sf up` writes: the default user needs a password nobody has, and each role's ACL user can do what the
 * role needs and nothing that would let it take the platform over.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { createRedis } from '../../common/redis-connection';
import {
  readRedisCredentialsFile,
  setProcessRedisCredentials,
  type RedisCredentials,
} from '../../common/redis-credentials';
import { cellAclUser, claimLease, fenceLease, heartbeatCell, keyLayout, releaseLease } from '../../protocol';
import { prepareLockedStateStore, type LockedStateStore } from '../../cli/state-store-acl';
import { freePort } from '../helpers/free-port';
import { waitForPort } from '../helpers/redis-server';

const run = promisify(execFile);

/** The error text of a command, or 'OK:<reply>' when it succeeded. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    return `OK:${JSON.stringify(await p)}`;
  } catch (err) {
    return (err as Error).message;
  }
}

// The rules follow the key prefix: the same properties under the default one and another.
for (const prefix of ['sf:', 'team.a:']) describeLockedStore(prefix);

function describeLockedStore(prefix: string): void {
  const keys = keyLayout(prefix);
  const group = keys.group('default');

  describe(`locked state store (prefix ${prefix})`, function () {
    this.timeout(60_000);
    let dir: string;
    let port: number;
    let store: LockedStateStore;
    let server: ChildProcess;
    const clients: Redis[] = [];
    const creds = new Map<string, RedisCredentials>();

    const as = (user: string): Redis => {
      const c = creds.get(user)!;
      const client = new Redis({
        port,
        host: '127.0.0.1',
        username: c.username,
        password: c.password,
        lazyConnect: true,
      });
      clients.push(client);
      return client;
    };

    before(async () => {
      dir = await mkdtemp(path.join(tmpdir(), 'sf-acl-'));
      port = await freePort();
      store = await prepareLockedStateStore({
        dataDir: dir,
        redisDir: dir,
        port,
        keyPrefix: prefix,
        cells: ['cell-1', 'cell-2'],
      });
      server = spawn('redis-server', store.serverArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
      await waitForPort(port);
      for (const user of store.users) creds.set(user, await readRedisCredentialsFile(store.credentialsFile(user)));
      const control = as('control');
      await control.hset(group.routes, '16000', '{"port":16000}');
      await control.set(group.version, '1');
    });

    after(async () => {
      setProcessRedisCredentials(undefined);
      for (const c of clients) c.disconnect();
      if (server.exitCode === null && server.signalCode === null) {
        const exited = new Promise((r) => server.once('exit', r));
        server.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    });

    it('keeps passwords out of argv and the ACL file, in 0600 files of a 0700 directory', async () => {
      const { stdout } = await run('ps', ['-eo', 'args']);
      const aclText = await readFile(store.aclFile, 'utf8');
      for (const [user, c] of creds) {
        expect(stdout, `${user}'s password in ps`).to.not.include(c.password);
        expect(aclText, `${user}'s password in the ACL file`).to.not.include(c.password);
      }
      expect(stdout).to.include(`redis-server 127.0.0.1:${port}`);
    });

    it('answers NOAUTH to a local unprivileged user without credentials, who cannot read them either', async function () {
      if (process.getuid?.() !== 0) this.skip(); // runuser needs root: skipped when the suite is not root
      const noauth = await run('runuser', [
        '-u',
        'nobody',
        '--',
        'redis-cli',
        '-p',
        String(port),
        'HSET',
        keys.tokens,
        'x',
        '{"name":"evil","scopes":["admin"]}',
      ]);
      expect(noauth.stdout + noauth.stderr).to.match(/NOAUTH/);
      const read = await run('runuser', ['-u', 'nobody', '--', 'cat', store.credentialsFile('control')]).then(
        () => 'read',
        (err: Error) => err.message,
      );
      expect(read).to.match(/Permission denied/);
      // root without credentials is no better off.
      const anon = new Redis({ port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      anon.on('error', () => undefined);
      clients.push(anon);
      expect(await outcome(anon.get(group.version))).to.match(/NOAUTH/);
    });

    it('lets the router read its table and beat, but never write a route or bump a version', async () => {
      const router = as('router');
      expect(await router.hvals(group.routes)).to.deep.equal(['{"port":16000}']);
      expect(await router.get(group.version)).to.equal('1');
      expect(await router.set(`${group.routerHeartbeatPrefix}r1`, '{}', 'PX', 5000)).to.equal('OK');
      for (const attempt of [
        router.hset(group.routes, '16000', '{"port":16000,"backends":[{"host":"10.6.6.6","port":1}]}'),
        router.incr(group.version),
        router.set(group.version, '99'),
        router.del(group.routes),
        router.publish(group.channel, '{"version":2,"upserts":[],"deletes":[16000]}'),
        router.hgetall(keys.tokens),
        router.hset(keys.cell('cell-1').desired, 'x', '{}'),
        router.eval("return redis.call('HSET', KEYS[1], '1', 'x')", 1, group.routes),
      ])
        expect(await outcome(attempt)).to.match(/NOPERM/);
      expect(await as('control').get(group.version)).to.equal('1');
    });

    it("lets a cell work its own keys, but not another cell's desired hash, tokens or routes", async () => {
      const cell = as(cellAclUser('cell-1'));
      const own = keys.cell('cell-1');
      const control = as('control');
      await control.hset(own.desired, 'cache-0', '{}');
      expect(await cell.hgetall(own.desired)).to.deep.equal({ 'cache-0': '{}' });
      await control.set(keys.leaseFloor('cache-0'), '2');
      const beat = await heartbeatCell(cell, keys, 'cell-1', '{}', 3000, [{ instanceId: 'cache-0', epoch: 2 }]);
      expect(beat.registered).to.equal(true);
      expect(await cell.get(own.registration)).to.equal('{}');
      expect(await cell.hset(own.actual, 'cache-0', '{}')).to.equal(1);
      expect(await cell.set(keys.orderResult('o-1'), '{}', 'PX', 1000)).to.equal('OK');
      expect(await cell.publish(keys.cellEvents, '{}')).to.be.a('number');
      expect(await cell.brpop(own.orders, 0.1)).to.equal(null);
      const other = keys.cell('cell-2');
      for (const attempt of [
        cell.hset(other.desired, 'x', '{"engine":"tcp","command":{"file":"/bin/sh"}}'),
        cell.hset(own.desired, 'x', '{"engine":"tcp","command":{"file":"/bin/sh"}}'),
        cell.hset(keys.tokens, 'x', '{"name":"evil","scopes":["admin"]}'),
        cell.set(other.registration, '{}'),
        heartbeatCell(cell, keys, 'cell-2', '{}', 3000, []),
        cell.hset(other.actual, 'x', '{}'),
        cell.brpop(other.orders, 0.1),
        cell.srem(keys.cells, 'cell-2'),
        cell.get(keys.orderResult('o-1')),
        cell.publish(other.notify, 'desired'),
        cell.hset(group.routes, '16000', '{}'),
        cell.hset(keys.services, 'x', '{}'),
      ])
        expect(await outcome(attempt)).to.match(/NOPERM/);
      const sub = as(cellAclUser('cell-1'));
      expect(await outcome(sub.subscribe(other.notify))).to.match(/NOPERM/);
    });

    it('lets a cell claim and release any lease but never lower a floor, for any instance id', async () => {
      const cell = as(cellAclUser('cell-2'));
      const control = as('control');
      const holder = { cell: 'cell-2', boot: 1 };
      // Instance ids as cell-protocol allows them; an id of exactly "floor" would make its lease key
      // end like a floor key and is refused (the platform's ids are always NAME-N).
      const ids = fc.sample(
        fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$/).filter((id) => id !== 'floor'),
        { numRuns: 150, seed: 11 },
      );
      ids.push('r', 'or', 'oor', 'loor', 'xfloor', 'cache-0', 'f');
      for (const id of ids) {
        await control.set(keys.leaseFloor(id), '5');
        expect((await claimLease(cell, keys, id, 5, holder)).ok, id).to.equal(true);
        expect((await claimLease(cell, keys, id, 4, holder)).ok, id).to.equal(false);
        for (const attempt of [
          cell.set(keys.leaseFloor(id), '0'),
          cell.pexpire(keys.leaseFloor(id), 1),
          cell.del(keys.leaseFloor(id)),
          cell.hset(keys.leaseFloor(id), 'epoch', '1'),
          cell.eval("return redis.call('PEXPIRE', KEYS[1], 1)", 1, keys.leaseFloor(id)),
          cell.eval("return redis.call('SET', KEYS[2], '0')", 2, keys.lease(id), keys.leaseFloor(id)),
        ])
          expect(await outcome(attempt), id).to.match(/NOPERM|can't access/);
        expect(await control.get(keys.leaseFloor(id)), id).to.equal('5');
        expect(await releaseLease(cell, keys, id, 5, holder), id).to.equal(true);
      }
      // Control still fences: the floor goes up and the old epoch can no longer be claimed.
      expect(await fenceLease(control, keys, 'cache-0', 6)).to.equal(6);
      expect((await claimLease(cell, keys, 'cache-0', 5, holder)).ok).to.equal(false);
    });

    it('refuses control the store administration and anything outside the prefix', async () => {
      const control = as('control');
      for (const attempt of [
        control.config('GET', 'requirepass'),
        control.call('ACL', 'LIST'),
        control.flushall(),
        control.keys('*'),
        control.set('other:key', '1'),
      ])
        expect(await outcome(attempt)).to.match(/NOPERM/);
    });

    it("keeps control's transactions and scripts across a restart (append-only replay passes the ACL)", async () => {
      const control = as('control');
      const key = (n: number): string => `${prefix}restart-check:${n}`;
      await control.multi().set(key(1), 'tx').set(key(2), 'tx').exec();
      await control.eval(
        "redis.call('SET', KEYS[1], 'lua'); redis.call('SET', KEYS[2], 'lua'); return 1",
        2,
        key(3),
        key(4),
      );
      // A clean stop flushes the append-only file; the replay at start is what is under test.
      const exited = new Promise((r) => server.once('exit', r));
      server.kill('SIGTERM');
      await exited;
      for (const c of clients.splice(0)) c.disconnect();
      server = spawn('redis-server', store.serverArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
      await waitForPort(port);
      const after = as('control');
      expect(await after.mget(key(1), key(2), key(3), key(4))).to.deep.equal(['tx', 'tx', 'lua', 'lua']);
      expect(await after.hget(group.routes, '16000')).to.equal('{"port":16000}');
      const anonymous = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0 });
      clients.push(anonymous);
      expect(await outcome(anonymous.get(key(1)))).to.match(/NOAUTH/);
    });

    describe('createRedis', () => {
      afterEach(() => setProcessRedisCredentials(undefined));

      it("presents the process's credentials, and a URL's own user:password wins over them", async () => {
        const url = `redis://127.0.0.1:${port}`;
        const router = creds.get('router')!;
        setProcessRedisCredentials(router);
        const a = createRedis(url, { lazyConnect: true });
        clients.push(a);
        expect(await a.get(group.version)).to.equal('1');
        expect(await outcome(a.hset(group.routes, '1', 'x'))).to.match(/NOPERM/);

        setProcessRedisCredentials({ username: 'router', password: 'wrong' });
        const b = createRedis(`redis://router:${encodeURIComponent(router.password)}@127.0.0.1:${port}`, {
          lazyConnect: true,
        });
        clients.push(b);
        expect(await b.get(group.version)).to.equal('1');
      });

      it('presents them over TLS (rediss://)', async () => {
        const tlsPort = await freePort();
        const cert = path.join(dir, 'cert.pem');
        const key = path.join(dir, 'key.pem');
        await run('openssl', [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=127.0.0.1',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
          '-keyout',
          key,
          '-out',
          cert,
        ]);
        // The same ACL file as the plain store: one more listener, TLS only.
        const tls = spawn(
          'redis-server',
          [
            '--port',
            '0',
            '--tls-port',
            String(tlsPort),
            '--bind',
            '127.0.0.1',
            '--tls-cert-file',
            cert,
            '--tls-key-file',
            key,
            '--tls-auth-clients',
            'no',
            '--save',
            '',
            '--aclfile',
            store.aclFile,
          ],
          { stdio: ['ignore', 'ignore', 'inherit'] },
        );
        try {
          await waitForPort(tlsPort);
          const ca = await readFile(cert);
          const anon = createRedis(`rediss://127.0.0.1:${tlsPort}`, {
            tls: { ca },
            lazyConnect: true,
            retryStrategy: () => null,
          });
          anon.on('error', () => undefined);
          clients.push(anon);
          expect(await outcome(anon.ping())).to.match(/NOAUTH/);
          setProcessRedisCredentials(creds.get('router'));
          const router = createRedis(`rediss://127.0.0.1:${tlsPort}`, { tls: { ca }, lazyConnect: true });
          clients.push(router);
          expect(await router.ping()).to.equal('PONG');
          expect(await outcome(router.hset(group.routes, '1', 'x'))).to.match(/NOPERM/);
          router.disconnect();
          anon.disconnect();
        } finally {
          const exited = new Promise((r) => tls.once('exit', r));
          tls.kill('SIGKILL');
          await exited;
        }
      });

      it('reaches the master through Sentinel with the credentials file', async () => {
        const sentinelPort = await freePort();
        const conf = path.join(dir, 'sentinel.conf');
        const admin = creds.get('admin')!;
        // Sentinel rewrites its file, so it must be writable; it holds the admin password (0600).
        await writeFile(
          conf,
          [
            `port ${sentinelPort}`,
            'bind 127.0.0.1',
            `sentinel monitor sf-state 127.0.0.1 ${port} 1`,
            'sentinel auth-user sf-state admin',
            `sentinel auth-pass sf-state ${admin.password}`,
            '',
          ].join('\n'),
          { mode: 0o600 },
        );
        await chmod(conf, 0o600);
        const sentinel = spawn('redis-server', [conf, '--sentinel'], { stdio: ['ignore', 'ignore', 'inherit'] });
        try {
          await waitForPort(sentinelPort);
          setProcessRedisCredentials(creds.get('router'));
          const viaSentinel = createRedis(`redis-sentinel://127.0.0.1:${sentinelPort}/sf-state`, {
            lazyConnect: true,
          });
          clients.push(viaSentinel);
          expect(await viaSentinel.get(group.version)).to.equal('1');
          expect(await outcome(viaSentinel.incr(group.version))).to.match(/NOPERM/);
          viaSentinel.disconnect();
        } finally {
          const exited = new Promise((r) => sentinel.once('exit', r));
          sentinel.kill('SIGKILL');
          await exited;
        }
      });
    });
  });
}
