import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { cellKeys, CELL_EVENTS_CHANNEL, NOTIFY_DESIRED, type ActualInstance, type CellRecord, type InstanceSpecInput, type OrderResult } from '../../control/cell/cell-protocol';
import { CellErrorCode } from '../../control/cell/errors';
import { eventually, tempCellDir } from '../helpers/cell-harness';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';

const SF = path.resolve(__dirname, '../../control/cli/sf.js');

describe('sf cell', function () {
  this.timeout(120_000);
  let state: RedisServerHandle;
  let redis: Redis;
  let cellDir: { dir: string; remove(): Promise<void> };
  let cell: ChildProcess | undefined;
  const pids = new Set<number>();

  function startCell(name = 'c1'): ChildProcess {
    const child = spawn(
      process.execPath,
      [SF, 'cell', '--name', name, '--zone', 'z1', '--capacity-mb', '2048', '--redis', state.url, '--data-dir', cellDir.dir, '--port-range', '22000-22099', '--heartbeat-ms', '200', '--heartbeat-ttl-ms', '1000'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr?.on('data', (d: Buffer) => {
      if (process.env.SF_TEST_VERBOSE) process.stderr.write(d);
    });
    return child;
  }

  async function desire(cellName: string, input: Partial<InstanceSpecInput> & { instanceId: string }): Promise<void> {
    const full = { service: 'svc', engine: 'redis', role: 'primary', epoch: 1, volume: { sizeMb: 64 }, ...input };
    await redis.hset(cellKeys.desired(cellName), input.instanceId, JSON.stringify(full));
    await redis.publish(cellKeys.notify(cellName), NOTIFY_DESIRED);
  }

  async function actual(cellName: string, id: string): Promise<ActualInstance | undefined> {
    const json = await redis.hget(cellKeys.actual(cellName), id);
    const value = json ? (JSON.parse(json) as ActualInstance) : undefined;
    if (value?.pid) pids.add(value.pid);
    return value;
  }

  async function order(cellName: string, body: Record<string, unknown>): Promise<OrderResult> {
    const orderId = `o-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    await redis.lpush(cellKeys.orders(cellName), JSON.stringify({ ...body, orderId }));
    return eventually(async () => {
      const json = await redis.get(cellKeys.orderResult(orderId));
      return json ? (JSON.parse(json) as OrderResult) : undefined;
    }, 30_000, `result of order ${orderId}`);
  }

  async function killCell(): Promise<void> {
    if (!cell || cell.exitCode !== null || cell.signalCode !== null) return;
    const exited = new Promise((r) => cell?.once('exit', r));
    cell.kill('SIGKILL');
    await exited;
  }

  beforeEach(async () => {
    state = await startRedisServer();
    redis = new Redis(state.url);
    cellDir = await tempCellDir();
  });

  afterEach(async () => {
    await killCell();
    // Instances outlive the agent by design; the test owns their cleanup.
    for (const pid of pids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    pids.clear();
    redis.disconnect();
    await state.stop();
    await cellDir.remove();
  });

  it('registers with a TTL heartbeat and the key expires when the cell process is killed', async () => {
    cell = startCell();
    const record = await eventually(async () => {
      const json = await redis.get(cellKeys.registration('c1'));
      return json ? (JSON.parse(json) as CellRecord) : undefined;
    }, 15_000, 'registration');
    expect(record).to.include({ name: 'c1', zone: 'z1', capacityMb: 2048, usedMb: 0, host: '127.0.0.1' });
    expect(record.executors).to.deep.equal(['process']);
    expect(record.engines).to.include.members(['redis', 'postgres', 'tcp']);
    expect(await redis.sismember('sf:cells', 'c1')).to.equal(1);
    const ttl = await redis.pttl(cellKeys.registration('c1'));
    expect(ttl).to.be.within(1, 1000);

    await killCell();
    const killedAt = Date.now();
    await eventually(async () => (await redis.exists(cellKeys.registration('c1'))) === 0, 3_000, 'registration expiry');
    expect(Date.now() - killedAt).to.be.below(1_500);
  });

  it('starts a desired instance, reports it running, obeys fence and refuses a stale-epoch primary', async () => {
    cell = startCell();
    await eventually(async () => (await redis.exists(cellKeys.registration('c1'))) === 1, 15_000, 'registration');
    const events: string[] = [];
    const sub = new Redis(state.url);
    await sub.subscribe(CELL_EVENTS_CHANNEL);
    sub.on('message', (_c: string, m: string) => events.push(m));

    const t0 = Date.now();
    await desire('c1', { instanceId: 'cache-0', epoch: 3, lease: { ttlMs: 1000 } });
    const running = await eventually(async () => {
      const a = await actual('c1', 'cache-0');
      return a?.state === 'running' ? a : undefined;
    }, 20_000, 'cache-0 running');
    const client = new Redis({ port: running.port as number, host: running.host, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => undefined);
    await client.set('hello', 'world');
    console.log(`      redis via sf cell: desired written to first successful query ${Date.now() - t0} ms`);
    expect(running).to.include({ role: 'primary', epoch: 3, engine: 'redis', executor: 'process', host: '127.0.0.1' });
    expect(running.port).to.be.within(22000, 22099);
    expect(events.some((e) => e.includes('"type":"actual"') && e.includes('cache-0'))).to.equal(true);
    await eventually(async () => (await redis.hget(cellKeys.lease('cache-0'), 'epoch')) === '3', 5_000, 'lease held');
    await eventually(async () => (JSON.parse((await redis.get(cellKeys.registration('c1'))) as string) as CellRecord).usedMb === 64, 3_000, 'usedMb 64');

    const pos = await order('c1', { type: 'position', instanceId: 'cache-0' });
    expect(pos.ok).to.equal(true);
    expect(pos.data?.role).to.equal('primary');

    const fenced = await order('c1', { type: 'fence', instanceId: 'cache-0' });
    expect(fenced).to.include({ ok: true, type: 'fence' });
    expect((await actual('c1', 'cache-0'))?.state).to.equal('fenced');
    const err = await client.ping().catch((e: Error) => e);
    expect(err).to.be.instanceOf(Error);
    client.disconnect();

    // Control asks for a restart as primary with an older epoch: refused, reported with the code.
    await desire('c1', { instanceId: 'cache-0', epoch: 2, generation: 1 });
    const refused = await eventually(async () => {
      const a = await actual('c1', 'cache-0');
      return a?.state === 'failed' ? a : undefined;
    }, 10_000, 'stale primary refused');
    expect(refused.lastError?.code).to.equal(CellErrorCode.StaleEpoch);

    const badOrder = await order('c1', { type: 'promote', instanceId: 'cache-0', epoch: 1 });
    expect(badOrder.ok).to.equal(false);
    sub.disconnect();
  });

  it('does not restart a crashed instance on its own, and re-adopts running instances after a restart', async () => {
    cell = startCell();
    await desire('c1', { instanceId: 'a-0' });
    await desire('c1', { instanceId: 'b-0' });
    const a = await eventually(async () => ((await actual('c1', 'a-0'))?.state === 'running' ? actual('c1', 'a-0') : undefined), 20_000, 'a-0 running');
    const b = await eventually(async () => ((await actual('c1', 'b-0'))?.state === 'running' ? actual('c1', 'b-0') : undefined), 20_000, 'b-0 running');

    process.kill(b?.pid as number, 'SIGKILL');
    const failed = await eventually(async () => {
      const x = await actual('c1', 'b-0');
      return x?.state === 'failed' ? x : undefined;
    }, 10_000, 'b-0 failed');
    expect(failed.lastError?.code).to.equal(CellErrorCode.InstanceExited);
    await new Promise((r) => setTimeout(r, 2_500));
    expect((await actual('c1', 'b-0'))?.state).to.equal('failed');

    // Control raises the generation: now the cell starts it again.
    await desire('c1', { instanceId: 'b-0', generation: 1 });
    await eventually(async () => (await actual('c1', 'b-0'))?.state === 'running', 20_000, 'b-0 restarted');

    await killCell();
    cell = startCell();
    await eventually(async () => {
      const x = await actual('c1', 'a-0');
      return x?.state === 'running' && x.pid === a?.pid && x.updatedAt > Date.now() - 5_000;
    }, 15_000, 'a-0 re-adopted');

    // Removing it from desired stops it and keeps the volume.
    await redis.hdel(cellKeys.desired('c1'), 'a-0');
    await redis.publish(cellKeys.notify('c1'), NOTIFY_DESIRED);
    const stopped = await eventually(async () => {
      const x = await actual('c1', 'a-0');
      return x?.state === 'stopped' ? x : undefined;
    }, 20_000, 'a-0 stopped').catch(async (err) => {
      console.log(await redis.hgetall(cellKeys.actual('c1')), await redis.hgetall(cellKeys.desired('c1')));
      throw err;
    });
    expect(stopped.volumePresent).to.equal(true);
    const deleted = await order('c1', { type: 'delete-volume', instanceId: 'a-0' });
    expect(deleted.ok).to.equal(true);
    expect(await actual('c1', 'a-0')).to.equal(undefined);
  });
});
