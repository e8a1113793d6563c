/**
 * A move left by a control that stopped (a restart, a crash, a lost lead) before it finished,
 * against a real redis-server: its record said `copying` for ever and refused every later move
 * of the service. Any control now ends such a move as failed once its runner has been silent for
 * MOVE_ABANDONED_AFTER_MS, undoing what a failure of the move would: a catch-up's new replica
 * leaves the service record (its spec off its cell, its volume tombstoned). A move whose runner
 * still beats is left alone.
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { CellDirectory } from '../../../control/services/cell-directory';
import { ServiceStore } from '../../../control/services/service-store';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { MoveSwitching } from '../../../control/services/volume-move-catch-up';
import { MOVE_ABANDONED_AFTER_MS, VolumeMover, type MoveRecord } from '../../../control/services/volume-mover';
import { keyLayout } from '../../../protocol/keys';
import { startRedisServer, type RedisServerHandle } from '../../helpers/redis-server';

const keys = keyLayout('sf:');

function service(name: string, withMoveTarget: boolean): ServiceRecord {
  const primary = { id: `${name}-0`, role: 'primary', cell: 'cell-a', zone: 'z1', generation: 1, epoch: 1 };
  const target = { ...primary, id: `${name}-1`, role: 'replica', cell: 'cell-b', zone: 'z2', moveOf: primary.id };
  return {
    name,
    engine: 'redis',
    status: 'running',
    replicas: 0,
    epoch: 1,
    instances: withMoveTarget ? [primary, target] : [primary],
  } as unknown as ServiceRecord;
}

function move(name: string, id: string, heartbeatAgoMs: number, catchUp: boolean): MoveRecord {
  const now = Date.now();
  return {
    id,
    service: name,
    instanceId: `${name}-0`,
    role: 'primary',
    method: catchUp ? 'catch-up' : 'copy',
    targetInstanceId: catchUp ? `${name}-1` : `${name}-0`,
    from: 'cell-a',
    to: 'cell-b',
    state: 'copying',
    phase: 1,
    bytes: 0,
    totalBytes: null,
    rateBps: null,
    etaS: null,
    writeWindowMs: null,
    steps: [],
    error: null,
    startedAt: now - heartbeatAgoMs - 1_000,
    finishedAt: null,
    runner: 'a-control-that-stopped',
    heartbeatAt: now - heartbeatAgoMs,
  };
}

describe('VolumeMover: moves left by a control that stopped', function () {
  this.timeout(30_000);
  let server: RedisServerHandle;
  let conn: Redis;
  let mover: VolumeMover;
  let store: ServiceStore;

  const switching: MoveSwitching = {
    canSwitch: () => false,
    switchover: () => Promise.reject(new Error('not in this test')),
    // Where the real one lets the cell delete the volume later, this one leaves a mark to check.
    tombstoneOp: (cell, instanceId) => ({ cmd: 'SET', key: `test-tombstone:${cell}:${instanceId}`, value: '1' }),
  };

  async function put(rec: ServiceRecord): Promise<void> {
    await store.change(rec.name, null, async () => ({ change: { record: rec }, result: undefined }));
  }

  async function seed(m: MoveRecord): Promise<void> {
    await conn.hset(keys.moves, m.id, JSON.stringify(m));
  }

  before(async () => {
    server = await startRedisServer();
    conn = new Redis(server.url);
    store = new ServiceStore(conn, keys);
    mover = new VolumeMover(conn, server.url, store, new CellDirectory(conn, keys), undefined, switching);
  });

  after(async () => {
    conn?.disconnect();
    await server?.stop();
  });

  it('ends a silent catch-up move as failed and takes its new replica out of the service', async () => {
    await put(service('cache', true));
    await seed(move('cache', 'move-cache-1', MOVE_ABANDONED_AFTER_MS + 5_000, true));
    const seen = await mover.get('move-cache-1');
    expect(seen?.state).to.equal('failed');
    expect(seen?.error).to.match(/^abandoned in phase 1: the control running it stopped before it finished$/);
    expect(seen?.finishedAt).to.be.a('number');
    const rec = await store.mustGet('cache');
    expect(rec.instances.map((i) => i.id)).to.deep.equal(['cache-0']);
    expect(await conn.get('test-tombstone:cell-b:cache-1')).to.equal('1');
    // Stored, not only answered: the next reader sees it ended.
    const stored = JSON.parse((await conn.hget(keys.moves, 'move-cache-1')) ?? '{}') as MoveRecord;
    expect(stored.state).to.equal('failed');
  });

  it('leaves a move whose runner still beats, and refuses a second move while it runs', async () => {
    await put(service('db', false));
    await seed(move('db', 'move-db-1', 1_000, false));
    expect((await mover.get('move-db-1'))?.state).to.equal('copying');
    const refused = await mover.start('db', 'cell-c').then(
      () => 'started',
      (err: Error) => err.message,
    );
    expect(refused).to.equal('a move of db is already in progress');
    expect((await store.mustGet('db')).instances.map((i) => i.id)).to.deep.equal(['db-0']);
  });

  it('takes a new move once the running one has been silent too long', async () => {
    await put(service('queue', false));
    await seed(move('queue', 'move-queue-1', MOVE_ABANDONED_AFTER_MS + 1_000, false));
    // No cell is registered here, so the new move is refused for its target, not for the old move.
    const answer = await mover.start('queue', 'cell-c').then(
      () => 'started',
      (err: Error) => err.message,
    );
    expect(answer).to.equal("to names no live cell: 'cell-c'");
    expect((await mover.get('move-queue-1'))?.state).to.equal('failed');
    expect((await mover.list('queue')).map((m) => m.state)).to.deep.equal(['failed']);
  });
});
