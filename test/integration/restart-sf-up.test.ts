/**
 * Ctrl-C `sf up` and start it again with a replicated Redis and a replicated
 * PostgreSQL service. Before the fix the new leader's first pass saw cells not yet registered,
 * fenced their primaries as cell-dead and deleted replica volumes. Now both services serve their
 * data again with the same primaries and epochs, and no volume disappears. On each executor:
 * `sf up --executor docker` runs every instance in a container.
 */
import { expect } from 'chai';
import { describeEachExecutor } from '../helpers/executor-under-test';
import { createUpPlatform, psql, redisThrough, timeUntil, type UpPlatform } from '../helpers/sf-up-platform';

describeEachExecutor('restart of sf up', function (executor) {
  this.timeout(600_000);
  let p: UpPlatform;

  before(async () => {
    p = await createUpPlatform(3, executor().flags, executor().cellEnv);
  });

  after(async () => {
    await p?.cleanup();
  });

  it('keeps primaries, epochs and every volume; both services serve their data again', async () => {
    await p.start();
    for (const [engine, name] of [
      ['redis', 'cache'],
      ['postgres', 'pg1'],
    ]) {
      const res = await p.sf([
        'create-service',
        engine!,
        name!,
        '--replicas',
        '1',
        '--durability',
        'sync',
        ...executor().flags,
        '--wait',
        '--timeout',
        '300',
      ]);
      expect(res.code, res.output).to.equal(0);
    }
    const cache = await p.service('cache');
    const pg = await p.service('pg1');
    for (const v of [cache, pg]) expect(v.executor ?? 'process', v.name).to.equal(executor().kind);
    // Nothing answers without credentials; the keys outlive the restart too.
    const redisKey = await p.serviceKey('cache');
    const pgKey = await p.serviceKey('pg1');
    // A fresh key can take a moment to reach every instance.
    await timeUntil(
      async () => (await redisThrough(cache.port!, redisKey, 'SET', 'k', 'v1')) === 'OK',
      30_000,
      'redis write with a fresh key',
    );
    await timeUntil(async () => (await psql(pg.port!, pgKey, 'select 1')) === '1', 30_000, 'pg through the router');
    await psql(pg.port!, pgKey, "create table t (v text); insert into t values ('row1')");
    const volumesBefore = await p.volumes();
    expect(volumesBefore, JSON.stringify([volumesBefore, cache.instances, pg.instances])).to.have.length(4);

    const exitCode = await p.interrupt();
    expect(exitCode).to.equal(0);

    const t0 = performance.now();
    await p.start();
    const redisMs = await timeUntil(
      async () => (await redisThrough(cache.port!, redisKey, 'GET', 'k')) === 'v1',
      60_000,
      'redis data through the router',
    );
    const pgMs = await timeUntil(
      async () => (await psql(pg.port!, pgKey, 'select v from t')) === 'row1',
      60_000,
      'postgres data through the router',
    );
    const servedMs = performance.now() - t0;
    // Writes too, which need the replica back under durability: sync: a replica whose link to the
    // primary dropped while its cell restarted takes a replication ping or two to count again.
    const writeMs = await timeUntil(
      async () => (await redisThrough(cache.port!, redisKey, 'SET', 'k2', 'v2')) === 'OK',
      30_000,
      'a redis write through the router',
    );
    console.log(`      first redis write acknowledged ${(writeMs / 1000).toFixed(1)} s after the data was served`);
    await psql(pg.port!, pgKey, "insert into t values ('row2')");
    const cacheAfter = await p.service('cache');
    const pgAfter = await p.service('pg1');
    const volumesAfter = await p.volumes();
    const deleted = volumesBefore.filter((v) => !volumesAfter.includes(v));
    console.log(
      `      sf up restart: all data served ${(servedMs / 1000).toFixed(1)} s after start (redis ${(redisMs / 1000).toFixed(1)} s, postgres ${((redisMs + pgMs) / 1000).toFixed(1)} s); ${deleted.length} volumes deleted`,
    );
    expect(deleted).to.deep.equal([]);
    for (const [before, after] of [
      [cache, cacheAfter],
      [pg, pgAfter],
    ]) {
      const primary = (v: typeof cache) => v.instances.find((i) => i.role === 'primary')?.id;
      expect(primary(after!), after!.name).to.equal(primary(before!));
      expect(after!.epoch, after!.name).to.equal(before!.epoch);
      expect(after!.instances.map((i) => i.id).sort()).to.deep.equal(before!.instances.map((i) => i.id).sort());
    }
    const events = await p.sf(['fencing', 'cache', '--json']);
    expect(events.output).to.not.match(/cell-dead/);
  });
});
