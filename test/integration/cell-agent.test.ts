import { spawn, type ChildProcess } from 'node:child_process';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { type CellRecord } from '../../protocol/cell-protocol';
import { ErrorCode } from '../../common/errors';
import { eventually, tempCellDir } from '../helpers/cell-harness';
import { CellDriver, killProcess, spawnCell } from '../helpers/cell-process';
import { freePort } from '../helpers/free-port';
import { freePortBlock, releasePortBlock } from '../helpers/service-cluster';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { keyLayout } from '../../protocol/keys';
import { instanceSpecSchema } from '../../protocol';

const KEYS = keyLayout();

describe('sf cell', function () {
  this.timeout(120_000);
  let state: RedisServerHandle;
  let redis: Redis;
  let driver: CellDriver;
  let cellDir: { dir: string; remove(): Promise<void> };
  let cell: ChildProcess | undefined;
  /** A block no other suite hands out: instance ports of a fixed range collided with them. */
  let ports = '';
  let block = 0;

  const startCell = (): ChildProcess =>
    spawnCell({ name: 'c1', redisUrl: state.url, dataDir: cellDir.dir, portRange: ports });

  async function registration(): Promise<CellRecord | undefined> {
    const json = await redis.get(KEYS.cell('c1').registration);
    return json ? (JSON.parse(json) as CellRecord) : undefined;
  }

  beforeEach(async () => {
    state = await startRedisServer();
    redis = new Redis(state.url);
    driver = new CellDriver(redis);
    cellDir = await tempCellDir();
    block = await freePortBlock();
    ports = `${block}-${block + 99}`;
  });

  afterEach(async () => {
    await killProcess(cell);
    driver.killInstances();
    redis.disconnect();
    await state.stop();
    await cellDir.remove();
    releasePortBlock(block);
  });

  it('registers with a TTL heartbeat and the key expires when the cell process is killed', async () => {
    cell = startCell();
    const record = await eventually(registration, 15_000, 'registration');
    expect(record).to.include({ name: 'c1', zone: 'z1', capacityMb: 4096, usedMb: 0, host: '127.0.0.1' });
    expect(record.executors).to.deep.equal(['process']);
    expect(record.engines).to.include.members(['redis', 'postgres', 'tcp']);
    expect(await redis.sismember('sf:cells', 'c1')).to.equal(1);
    expect(await redis.pttl(KEYS.cell('c1').registration)).to.be.within(1, 1000);

    await killProcess(cell);
    const killedAt = Date.now();
    await eventually(
      async () => (await redis.exists(KEYS.cell('c1').registration)) === 0,
      3_000,
      'registration expiry',
    );
    expect(Date.now() - killedAt).to.be.below(1_500);
  });

  it('starts a desired instance, reports it running, obeys fence and refuses a stale-epoch primary', async () => {
    cell = startCell();
    let log = '';
    cell.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    await eventually(registration, 15_000, 'registration');
    const events: string[] = [];
    const sub = new Redis(state.url);
    await sub.subscribe(KEYS.cellEvents);
    sub.on('message', (_c: string, m: string) => events.push(m));

    const t0 = Date.now();
    await driver.desire('c1', { instanceId: 'cache-0', epoch: 3, lease: { ttlMs: 1000 } });
    const running = await driver.waitState('c1', 'cache-0', 'running', 20_000);
    const client = new Redis({
      port: running.port as number,
      host: running.host,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    client.on('error', () => undefined);
    await client.set('hello', 'world');
    console.log(`      redis via sf cell: desired written to first successful query ${Date.now() - t0} ms`);
    expect(running).to.include({ role: 'primary', epoch: 3, engine: 'redis', executor: 'process', host: '127.0.0.1' });
    const [from, to] = ports.split('-').map(Number);
    expect(running.port).to.be.within(from, to);
    expect(events.some((e) => e.includes('"type":"actual"') && e.includes('cache-0'))).to.equal(true);
    await eventually(async () => (await redis.hget(KEYS.lease('cache-0'), 'epoch')) === '3', 5_000, 'lease held');
    await eventually(async () => (await registration())?.usedMb === 64, 3_000, 'usedMb 64');

    const pos = await driver.order('c1', { type: 'position', instanceId: 'cache-0' });
    expect(pos.ok).to.equal(true);
    expect(pos.data?.role).to.equal('primary');

    const fenced = await driver.order('c1', { type: 'fence', instanceId: 'cache-0' });
    expect(fenced).to.include({ ok: true, type: 'fence' });
    expect((await driver.actual('c1', 'cache-0'))?.state).to.equal('fenced');
    expect(await client.ping().catch((e: Error) => e)).to.be.instanceOf(Error);
    client.disconnect();

    // Control asks for a restart as primary with an older epoch: refused, reported with the code.
    await driver.desire('c1', { instanceId: 'cache-0', epoch: 2, generation: 1 });
    const refused = await driver.waitState('c1', 'cache-0', 'failed', 10_000);
    expect(refused.lastError?.code).to.equal(ErrorCode.StaleEpoch);
    // The decision is in the cell's own log too, not only in the report.
    await eventually(async () => /refusing to start as primary with epoch 2/.test(log), 5_000, 'refusal logged');
    const line = log.split('\n').find((l) => l.includes('refusing to start as primary')) ?? '{}';
    expect(JSON.parse(line)).to.include({ instanceId: 'cache-0', code: ErrorCode.StaleEpoch, state: 'failed' });
    expect((await driver.order('c1', { type: 'promote', instanceId: 'cache-0', epoch: 1 })).ok).to.equal(false);

    const invalid = await driver.order('c1', { type: 'explode' });
    expect(invalid.error?.code).to.equal(ErrorCode.UnknownOrder);
    sub.disconnect();
  });

  it('does not restart a crashed instance on its own, and re-adopts running instances after a restart', async () => {
    cell = startCell();
    await driver.desire('c1', { instanceId: 'a-0' });
    await driver.desire('c1', { instanceId: 'b-0' });
    const a = await driver.waitState('c1', 'a-0', 'running', 20_000);
    const b = await driver.waitState('c1', 'b-0', 'running', 20_000);

    process.kill(b.pid as number, 'SIGKILL');
    const failed = await driver.waitState('c1', 'b-0', 'failed', 10_000);
    expect(failed.lastError?.code).to.equal(ErrorCode.InstanceExited);
    await new Promise((r) => setTimeout(r, 2_500));
    expect((await driver.actual('c1', 'b-0'))?.state).to.equal('failed');

    // Control raises the generation: now the cell starts it again.
    await driver.desire('c1', { instanceId: 'b-0', generation: 1 });
    await driver.waitState('c1', 'b-0', 'running', 20_000);

    await killProcess(cell);
    const restartedAt = Date.now();
    cell = startCell();
    await eventually(
      async () => {
        const x = await driver.actual('c1', 'a-0');
        return x?.state === 'running' && x.pid === a.pid && x.updatedAt >= restartedAt;
      },
      15_000,
      'a-0 re-adopted',
    );

    // Removing it from desired stops it and keeps the volume.
    await driver.undesire('c1', 'a-0');
    const stopped = await driver.waitState('c1', 'a-0', 'stopped', 20_000);
    expect(stopped.volumePresent).to.equal(true);
    expect((await driver.order('c1', { type: 'delete-volume', instanceId: 'a-0' })).ok).to.equal(true);
    expect(await driver.actual('c1', 'a-0')).to.equal(undefined);
  });

  it('waits for Redis at start, and re-registers and re-reports after Redis restarts empty', async () => {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const startState = (): ChildProcess =>
      spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: 'ignore',
      });
    cell = spawnCell({ name: 'c9', redisUrl: url, dataDir: cellDir.dir, portRange: ports });
    await new Promise((r) => setTimeout(r, 1_000));
    expect(cell.exitCode).to.equal(null);
    let own = startState();
    const ownRedis = new Redis(url, { retryStrategy: () => 100 });
    ownRedis.on('error', () => undefined);
    const ownDriver = new CellDriver(ownRedis);
    try {
      await eventually(
        async () => (await ownRedis.exists(KEYS.cell('c9').registration)) === 1,
        15_000,
        'registration once Redis is up',
      );
      await ownDriver.desire('c9', { instanceId: 'w-0' });
      const running = await ownDriver.waitState('c9', 'w-0', 'running', 20_000);

      // Redis dies and comes back empty: the cell registers again and reports its instance.
      own.kill('SIGKILL');
      await new Promise((r) => own.once('exit', r));
      own = startState();
      await eventually(
        async () => (await ownRedis.exists(KEYS.cell('c9').registration)) === 1,
        15_000,
        're-registration',
      );
      const again = await eventually(() => ownDriver.actual('c9', 'w-0'), 15_000, 're-report');
      expect(again).to.include({ state: 'running', pid: running.pid });
      // The wiped desired hash is not taken as "stop everything".
      await new Promise((r) => setTimeout(r, 2_500));
      expect(await ownDriver.actual('c9', 'w-0')).to.include({ state: 'running', pid: running.pid });
    } finally {
      ownDriver.killInstances();
      ownRedis.disconnect();
      own.kill('SIGKILL');
    }
  });

  it('heartbeats with one SET at rest (no script, SADD or MULTI), and reads a desired entry that came without a notification at the next poll', async () => {
    cell = spawnCell({
      name: 'c1',
      redisUrl: state.url,
      dataDir: cellDir.dir,
      portRange: ports,
      extraArgs: ['--desired-poll-ms', '1500'],
    });
    await eventually(registration, 15_000, 'registration');
    const calls = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const m of (await redis.info('commandstats')).matchAll(/cmdstat_([^:]+):calls=(\d+)/g))
        out[m[1]!] = Number(m[2]);
      return out;
    };
    await new Promise((r) => setTimeout(r, 500));
    const before = await calls();
    // Ten heartbeats at --heartbeat-ms 200.
    await new Promise((r) => setTimeout(r, 2_000));
    const after = await calls();
    // The floor-checking script runs only for a missing registration.
    expect((after.evalsha ?? 0) - (before.evalsha ?? 0)).to.equal(0);
    expect((after.exists ?? 0) - (before.exists ?? 0)).to.equal(0);
    expect((after.set ?? 0) - (before.set ?? 0)).to.be.at.least(5);
    expect((after.sadd ?? 0) - (before.sadd ?? 0)).to.equal(0);
    expect((after.exec ?? 0) - (before.exec ?? 0)).to.equal(0);
    expect(await redis.sismember('sf:cells', 'c1')).to.equal(1);

    // Written as control would, but with no `desired` message: only the poll can find it.
    const spec = instanceSpecSchema.parse({
      instanceId: 'quiet-0',
      service: 'svc',
      engine: 'redis',
      role: 'primary',
      epoch: 1,
      volume: { sizeMb: 64 },
    });
    await redis.hset(KEYS.cell('c1').desired, 'quiet-0', JSON.stringify(spec));
    await driver.waitState('c1', 'quiet-0', 'running', 20_000);
  });

  it('runs orders for different instances concurrently: a fence does not wait behind a hung instance', async () => {
    cell = startCell();
    await driver.desire('c1', { instanceId: 'slow-0' });
    await driver.desire('c1', { instanceId: 'fast-0' });
    const slow = await driver.waitState('c1', 'slow-0', 'running', 20_000);
    await driver.waitState('c1', 'fast-0', 'running', 20_000);
    process.kill(slow.pid as number, 'SIGSTOP');
    try {
      const hung = driver.order('c1', { type: 'position', instanceId: 'slow-0' });
      await new Promise((r) => setTimeout(r, 100));
      const fence = await driver.order('c1', { type: 'fence', instanceId: 'fast-0' });
      const position = await hung;
      expect(fence.ok).to.equal(true);
      expect(position.ok).to.equal(false);
      expect(fence.finishedAt).to.be.below(position.finishedAt);
    } finally {
      process.kill(slow.pid as number, 'SIGCONT');
    }
  });

  it('deregisters at once on SIGTERM, and with --stop-instances-on-exit stops its instances cleanly', async () => {
    cell = spawnCell({
      name: 'c1',
      redisUrl: state.url,
      dataDir: cellDir.dir,
      portRange: ports,
      extraArgs: ['--stop-instances-on-exit'],
    });
    await driver.desire('c1', { instanceId: 's-0' });
    const running = await driver.waitState('c1', 's-0', 'running', 20_000);
    const exited = new Promise<number | null>((r) => cell?.once('exit', (code) => r(code)));
    cell.kill('SIGTERM');
    expect(await exited).to.equal(0);
    expect(await redis.exists(KEYS.cell('c1').registration)).to.equal(0);
    expect((await driver.actual('c1', 's-0'))?.state).to.equal('stopped');
    expect(() => process.kill(running.pid as number, 0)).to.throw();
  });

  it('reports an invalid desired spec as failed with the field', async () => {
    cell = startCell();
    await redis.hset(
      KEYS.cell('c1').desired,
      'bad-0',
      JSON.stringify({
        instanceId: 'bad-0',
        service: 's',
        engine: 'mysql',
        role: 'primary',
        epoch: 1,
        volume: { sizeMb: 1 },
      }),
    );
    await redis.publish(KEYS.cell('c1').notify, 'desired');
    const bad = await driver.waitState('c1', 'bad-0', 'failed', 10_000);
    expect(bad.lastError?.code).to.equal(ErrorCode.InvalidInstanceSpec);
    expect(bad.lastError?.message).to.match(/^engine/);
    expect(bad).to.include({ service: 's', role: 'primary', epoch: 1 });

    // Fixed: the report is replaced by the real one.
    await driver.desire('c1', { instanceId: 'bad-0', service: 's' });
    await driver.waitState('c1', 'bad-0', 'running', 20_000);
  });
});
