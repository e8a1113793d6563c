import { rm } from 'node:fs/promises';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { ErrorCode, isSfError } from '../../common/errors';
import { fencedCommit, type LeaderFence } from '../../control/leader/fenced-commit';
import { LeaderElector } from '../../control/leader/leader-elector';
import { DegradedFailoverCoordinator, RouteEmitter, ServiceStore, type ServiceView } from '../../control/services';
import type { CellSnapshot } from '../../control/services/cell-directory';
import { ServiceReconciler } from '../../control/convergence/service-reconciler';
import { RouterGroupStore } from '../../control/state/router-group-store';
import { TcpRouteStore } from '../../control/state/tcp-route-store';
import type { ActualInstance, CellRecord } from '../../protocol';
import type { ServiceChange } from '../../control/services/service-store';
import type { ServiceRecord } from '../../control/services/service-types';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { freePortBlock, startServiceCluster, type ServiceCluster } from '../helpers/service-cluster';
import { freePort } from '../helpers/free-port';
import { runSf, type SfProcess } from '../helpers/sf-process';
import { eventually } from '../helpers/tcp-client';
import { keyLayout } from '../../protocol/keys';

interface LeaderInfo {
  holder: string | null;
  token: number | null;
  this_control: { id: string; leader: boolean };
}

describe('leader election', function () {
  this.timeout(120_000);

  describe('two controls', () => {
    let cluster: ServiceCluster;
    before(async () => {
      cluster = await startServiceCluster({ cells: 2, controls: 2 });
    });
    after(async () => {
      await cluster?.stop();
    });

    it('has exactly one leader; the standby places the next service once the leader is gone', async () => {
      const infos = await Promise.all(cluster.controls.map((c) => c.api<LeaderInfo>('GET', '/v3/leader')));
      expect(infos.filter((i) => i.body.this_control.leader)).to.have.length(1);
      const leaderIndex = infos.findIndex((i) => i.body.this_control.leader);
      const firstToken = infos[leaderIndex].body.token!;

      await cluster.api('POST', '/v3/service_instances', {
        name: 'before',
        engine: 'redis',
        replicas: 0,
        volume: { sizeMb: 32 },
      });
      await cluster.waitForService('before', 30_000);

      const t0 = performance.now();
      await cluster.stopControl(leaderIndex);
      const standby = cluster.controls[1 - leaderIndex];
      await eventually(
        async () => (await standby.api<LeaderInfo>('GET', '/v3/leader')).body.this_control.leader,
        10_000,
        'standby elected',
      );
      console.log(`      standby elected ${(performance.now() - t0).toFixed(0)} ms after the leader stopped`);
      const info = await standby.api<LeaderInfo>('GET', '/v3/leader');
      expect(info.body.token).to.be.greaterThan(firstToken);

      const created = await standby.api<ServiceView>('POST', '/v3/service_instances', {
        name: 'after',
        engine: 'redis',
        replicas: 1,
        volume: { sizeMb: 32 },
      });
      expect(created.status).to.equal(201);
      const placed = await cluster.waitForService('after', 30_000);
      expect(placed.instances).to.have.length(2);
    });
  });

  describe('two sf control processes', () => {
    let redis: RedisServerHandle;
    const procs: SfProcess[] = [];
    const token = 'leader-test-token-0123456789';
    before(async () => {
      redis = await startRedisServer();
    });
    after(async () => {
      await Promise.all(procs.map((p) => p.stop()));
      await redis.stop();
      await rm(`/tmp/sf-leader-test-${process.pid}`, { recursive: true, force: true });
    });

    it('a killed leader is replaced once its lock expires, and the new leader places services', async () => {
      const env = { SF_API_TOKEN: token, SF_LOG_LEVEL: 'warn' };
      const ports = [await freePort(), await freePort()];
      for (const port of ports)
        procs.push(runSf(['control', '--listen', `127.0.0.1:${port}`, '--redis', redis.url], env));
      const get = async (port: number): Promise<LeaderInfo | null> => {
        try {
          const res = await fetch(`http://127.0.0.1:${port}/v3/leader`, {
            headers: { authorization: `Bearer ${token}` },
          });
          return (await res.json()) as LeaderInfo;
        } catch {
          return null;
        }
      };
      await eventually(
        async () => {
          const all = await Promise.all(ports.map(get));
          return all.every((i) => i !== null) && all.filter((i) => i?.this_control.leader).length === 1;
        },
        30_000,
        'both controls up, one leader',
      );
      const infos = await Promise.all(ports.map(get));
      const leader = infos.findIndex((i) => i!.this_control.leader);
      const standbyPort = ports[1 - leader];
      const cellPort = await freePortBlock();
      const cell = runSf(
        [
          'cell',
          '--name',
          'solo',
          '--zone',
          'z1',
          '--capacity-mb',
          '1000',
          '--redis',
          redis.url,
          '--data-dir',
          `/tmp/sf-leader-test-${process.pid}`,
          '--port-range',
          `${cellPort}-${cellPort + 99}`,
          '--stop-instances-on-exit',
        ],
        env,
      );
      procs.push(cell);

      const t0 = performance.now();
      procs[leader].child.kill('SIGKILL');
      await eventually(
        async () => (await get(standbyPort))?.this_control.leader === true,
        10_000,
        'standby takes over',
      );
      console.log(
        `      standby took over ${(performance.now() - t0).toFixed(0)} ms after the leader was SIGKILLed (lock TTL 3000 ms)`,
      );
      expect((await get(standbyPort))!.token).to.be.greaterThan(infos[leader]!.token!);

      const api = async <T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> => {
        const res = await fetch(`http://127.0.0.1:${standbyPort}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.status, body: (await res.json()) as T };
      };
      await eventually(
        async () => (await api<{ resources: unknown[] }>('GET', '/v3/cells')).body.resources.length === 1,
        30_000,
        'cell registered',
      );
      expect(
        (
          await api('POST', '/v3/service_instances', {
            name: 'next',
            engine: 'redis',
            replicas: 0,
            volume: { sizeMb: 32 },
          })
        ).status,
      ).to.equal(201);
      await eventually(
        async () => (await api<ServiceView>('GET', '/v3/service_instances/next')).body.status === 'running',
        30_000,
        'placed by the new leader',
      );
      const events = await api<{ resources: Array<{ type: string; leader_token: number }> }>(
        'GET',
        '/v3/service_instances/next/events',
      );
      expect(events.body.resources.find((e) => e.type === 'instance-placed')?.leader_token).to.equal(
        (await get(standbyPort))!.token,
      );
    });
  });

  describe('fencing tokens', () => {
    let redis: RedisServerHandle;
    let conn: Redis;
    const keys = keyLayout('sf:');
    before(async () => {
      redis = await startRedisServer();
      conn = new Redis(redis.url);
    });
    after(async () => {
      conn.disconnect();
      await redis.stop();
    });

    const elector = (holderId: string, ttlMs = 5_000): LeaderElector =>
      new LeaderElector(conn, {
        lockKey: keys.leaderLock,
        tokenKey: keys.leaderToken,
        holderId,
        ttlMs,
        renewMs: 10_000,
      });
    const lead = async (holderId: string): Promise<{ elector: LeaderElector; fence: LeaderFence }> => {
      const e = elector(holderId);
      await e.tick();
      return { elector: e, fence: e.current()! };
    };
    /** Route and service stores and a reconciler over them, without the records earlier tests left ('{}'). */
    const convergence = async () => {
      await conn.del(keys.services);
      const groups = new RouterGroupStore(conn, keys);
      const group = await groups.ensureDefault();
      const routes = new TcpRouteStore(conn, keys, groups);
      const emitter = new RouteEmitter(groups, routes);
      const store = new ServiceStore(conn, keys);
      const reconciler = new ServiceReconciler(store, emitter, new DegradedFailoverCoordinator());
      const firstPort = Number(/^(\d+)/.exec(group.reservable_ports)![1]);
      return { group, routes, emitter, store, reconciler, firstPort };
    };
    /** A one-instance Redis service's record, written by the leader holding `token`. */
    const serviceRecord = (
      name: string,
      at: { port: number; cell: string; zone: string },
      status: 'starting' | 'running',
      group: { name: string; guid: string },
      token: number,
    ): ServiceRecord =>
      ({
        name,
        engine: 'redis',
        replicas: 0,
        volume: { sizeMb: 16 },
        routerGroup: group.name,
        routerGroupGuid: group.guid,
        port: at.port,
        status,
        message: null,
        epoch: 1,
        instances: [
          {
            id: `${name}-0`,
            cell: at.cell,
            zone: at.zone,
            role: 'primary',
            epoch: 1,
            generation: 0,
            specWritten: true,
            placedAt: 0,
          },
        ],
        nextIndex: 1,
        leaderToken: token,
        createdAt: 0,
        updatedAt: 0,
      }) as unknown as ServiceRecord;
    /** A service's healthy primary as its cell reports it. */
    const primaryReport = (name: string, port: number): ActualInstance =>
      ({
        instanceId: `${name}-0`,
        state: 'running',
        generation: 0,
        host: '127.0.0.1',
        port,
        role: 'primary',
        epoch: 1,
        healthy: true,
        leaseHeld: true,
      }) as ActualInstance;

    it("rejects a stale leader's write once a newer leader holds the lock", async () => {
      const a = elector('a', 300);
      const b = elector('b');
      await a.tick();
      const staleFence = a.current()!;
      expect(staleFence.token).to.equal(1);
      await b.tick();
      expect(b.current()).to.equal(null); // The lock is held.

      // a stalls (no renewal) past its TTL; b takes over with a larger token.
      await new Promise((r) => setTimeout(r, 400));
      await b.tick();
      const fresh = b.current()!;
      expect(fresh.token).to.equal(2);

      const stale = await fencedCommit(
        conn,
        staleFence,
        [],
        [{ cmd: 'HSET', key: keys.services, field: 'x', value: '{}' }],
      );
      expect(stale).to.deep.equal({ ok: false, reason: 'stale-leader', currentToken: 2 });
      expect(await conn.hexists(keys.services, 'x')).to.equal(0);

      const store = new ServiceStore(conn, keys);
      try {
        await store.change('x', staleFence, async () => ({ change: { record: null }, result: undefined }));
        expect.fail('a stale leader must not write');
      } catch (err) {
        expect(isSfError(err) && err.code).to.equal(ErrorCode.StaleLeader);
      }
      expect(
        await fencedCommit(conn, fresh, [], [{ cmd: 'HSET', key: keys.services, field: 'y', value: '{}' }]),
      ).to.deep.equal({ ok: true });

      // The deposed leader learns it on its next renewal.
      await a.tick();
      expect(a.current()).to.equal(null);
      await b.stop();
      expect(await conn.exists(keys.leaderLock)).to.equal(0);
    });

    it('commits several records in one fenced write: the version moves by their number, one change message each', async () => {
      const { elector: leader, fence } = await lead('c');
      const writer = new ServiceStore(conn, keys);
      const reader = new ServiceStore(conn, keys);
      const sub = new Redis(redis.url);
      const heard: string[] = [];
      sub.on('message', (_channel: string, message: string) => {
        heard.push(message);
        reader.noteChanged(message);
      });
      await sub.subscribe(keys.servicesChanged);
      try {
        const before = await reader.snapshot();
        const writerBefore = await writer.snapshot();
        const record = (name: string) => ({ name, status: 'starting', instances: [] }) as unknown as ServiceRecord;
        const result = await writer.changeMany(['m1', 'm2', 'm3'], fence, async (current) => {
          expect([...current.values()]).to.deep.equal([null, null, null]);
          const changes = new Map<string, ServiceChange>([
            ['m1', { record: record('m1') }],
            ['m2', { record: record('m2') }],
          ]);
          return { changes, result: 'ok' };
        });
        expect(result).to.equal('ok');
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(before.version + 2);
        expect(await conn.hexists(keys.services, 'm3')).to.equal(0);
        await eventually(async () => heard.length >= 2, 5_000, 'two change messages');
        expect(heard).to.deep.equal([`${before.version + 1} m1`, `${before.version + 2} m2`]);
        // The writer learned its own commit; a reader catches up from the messages.
        for (const [store, from] of [
          [writer, writerBefore],
          [reader, before],
        ] as const) {
          const after = await store.snapshot();
          expect(after.version).to.equal(before.version + 2);
          expect(after.services.get('m2')).to.deep.include({ name: 'm2', status: 'starting' });
          expect([...(store.changedBetween(from, after) ?? [])]).to.have.members(['m1', 'm2']);
        }
        // A deposed leader's batch writes nothing.
        await conn.incr(keys.leaderToken);
        try {
          await writer.changeMany(['m4'], fence, async () => ({
            changes: new Map([['m4', { record: record('m4') }]]),
            result: undefined,
          }));
          expect.fail('a stale leader must not write');
        } catch (err) {
          expect(isSfError(err) && err.code).to.equal(ErrorCode.StaleLeader);
        }
        expect(await conn.hexists(keys.services, 'm4')).to.equal(0);
      } finally {
        sub.disconnect();
        await leader.stop();
      }
    });

    it('marks started services running many to a commit: their routes in one write, one change message per record; the recheck reads their routes at once; a deposed leader commits nothing', async () => {
      const { elector: leader, fence } = await lead('d');
      const { group, routes, store, reconciler, firstPort } = await convergence();
      const names = ['r1', 'r2', 'r3', 'r4', 'r5'];
      const cellRecord = { name: 'c1', zone: 'z1', capacityMb: 4096, heartbeatTtlMs: 3_000 } as CellRecord;
      const actual = new Map<string, ActualInstance>();
      names.forEach((name, i) => actual.set(`${name}-0`, primaryReport(name, 30_000 + i)));
      const cells = new Map<string, CellSnapshot>([['c1', { name: 'c1', alive: true, record: cellRecord, actual }]]);
      const starting = (name: string, i: number): ServiceRecord =>
        serviceRecord(name, { port: firstPort + i, cell: 'c1', zone: 'z1' }, 'starting', group, fence.token);
      for (const [i, name] of names.entries())
        await store.change(name, null, async () => ({ change: { record: starting(name, i) }, result: undefined }));

      const sub = new Redis(redis.url);
      const heard: string[] = [];
      sub.on('message', (_channel: string, message: string) => heard.push(message));
      await sub.subscribe(keys.servicesChanged);
      try {
        const version = Number(await conn.get(keys.servicesVersion));
        const routesVersion = (await routes.table(group, { versionOnly: true })).version;
        const decided = await reconciler.runReady(['r1', 'r2', 'r3'], fence, cells);
        expect([...decided]).to.have.members(['r1', 'r2', 'r3']);
        for (const [i, name] of ['r1', 'r2', 'r3'].entries()) {
          expect(await store.get(name)).to.include({ status: 'running', leaderToken: fence.token });
          const route = await routes.route(group, firstPort + i);
          expect(route?.backends.map((b) => [b.id, b.port, b.state])).to.deep.equal([
            [`${name}-0`, 30_000 + i, 'active'],
          ]);
        }
        // One route write for the three (the write after the commit found nothing to change).
        expect((await routes.table(group, { versionOnly: true })).version).to.equal(routesVersion + 1);
        // One commit: the services version moved by three, one change message per record.
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(version + 3);
        await eventually(async () => heard.length >= 3, 5_000, 'three change messages');
        expect(heard).to.deep.equal([`${version + 1} r1`, `${version + 2} r2`, `${version + 3} r3`]);

        // The recheck round finds the three as they should be, from one read of their routes, and
        // names one whose route lost its backend behind the leader's back.
        const running = await Promise.all(['r1', 'r2', 'r3'].map(async (n) => (await store.get(n))!));
        expect([...(await reconciler.recheck(running, cells))]).to.have.members(['r1', 'r2', 'r3']);
        await routes.delete([
          {
            router_group_guid: group.guid,
            port: firstPort + 1,
            backend_ip: '127.0.0.1',
            backend_port: 30_001,
            backend_id: 'r2-0',
          },
        ]);
        expect([...(await reconciler.recheck(running, cells))]).to.have.members(['r1', 'r3']);

        // A deposed leader's batch changes no record and sends no change message.
        await conn.incr(keys.leaderToken);
        try {
          await reconciler.runReady(['r4', 'r5'], fence, cells);
          expect.fail('a stale leader must not commit');
        } catch (err) {
          expect(isSfError(err) && err.code).to.equal(ErrorCode.StaleLeader);
        }
        expect(await store.get('r4')).to.include({ status: 'starting' });
        expect(await store.get('r5')).to.include({ status: 'starting' });
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(version + 3);
        await new Promise((r) => setTimeout(r, 200));
        expect(heard).to.have.length(3);
      } finally {
        sub.disconnect();
        await leader.stop();
      }
    });

    it('tears down deleting services many to a commit: routes in one write, one notice per cell, records gone once stopped; confirms settled-looking services without writing; a deposed leader removes and commits nothing', async () => {
      const { elector: leader, fence } = await lead('e');
      const setUp = await convergence();
      const { group, routes, emitter, store, reconciler } = setUp;
      const firstPort = setUp.firstPort + 100;
      // d1-d3 on cell c1, d4 and d5 on c2.
      const names = ['d1', 'd2', 'd3', 'd4', 'd5'];
      const cellOf = (name: string): string => (['d4', 'd5'].includes(name) ? 'c2' : 'c1');
      const report = (name: string, i: number): ActualInstance => primaryReport(name, 31_000 + i);
      const cellsWith = (reported: string[]): Map<string, CellSnapshot> =>
        new Map(
          ['c1', 'c2'].map((c) => [
            c,
            {
              name: c,
              alive: true,
              record: { name: c, zone: c, capacityMb: 4096, heartbeatTtlMs: 3_000 } as CellRecord,
              actual: new Map(
                names
                  .map((n, i) => [n, i] as const)
                  .filter(([n]) => cellOf(n) === c && reported.includes(n))
                  .map(([n, i]) => [`${n}-0`, report(n, i)]),
              ),
            },
          ]),
        );
      const running = (name: string, i: number): ServiceRecord =>
        serviceRecord(
          name,
          { port: firstPort + i, cell: cellOf(name), zone: cellOf(name) },
          'running',
          group,
          fence.token,
        );
      const cells = cellsWith(names);
      for (const [i, name] of names.entries()) {
        await store.change(name, null, async () => ({ change: { record: running(name, i) }, result: undefined }));
        await conn.hset(keys.cell(cellOf(name)).desired, `${name}-0`, '{}');
      }
      await emitter.syncMany(
        names.map((n, i) => running(n, i)),
        cells,
        fence.token,
      );

      // Settled-looking services are confirmed from one read of their routes, nothing written;
      // one whose step would change its record (a stale message to clear) is not, nor one whose
      // route lost its backend.
      const version0 = Number(await conn.get(keys.servicesVersion));
      const stale = { ...running('d5', 4), message: 'primary d5-0 is lost' } as ServiceRecord;
      await routes.delete([
        {
          router_group_guid: group.guid,
          port: firstPort + 2,
          backend_ip: '127.0.0.1',
          backend_port: 31_002,
          backend_id: 'd3-0',
        },
      ]);
      const confirmed = await reconciler.confirm([running('d4', 3), stale, running('d3', 2)], fence, cells);
      expect([...confirmed]).to.deep.equal(['d4']);
      await emitter.syncMany([running('d3', 2)], cells, fence.token);
      expect(Number(await conn.get(keys.servicesVersion))).to.equal(version0);

      for (const name of ['d1', 'd2', 'd3'])
        await store.change(name, null, async (cur) => ({
          change: { record: { ...cur!, status: 'deleting' } },
          result: undefined,
        }));
      const sub = new Redis(redis.url);
      const notices: string[] = [];
      const heard: string[] = [];
      sub.on('message', (channel: string, message: string) =>
        channel === keys.servicesChanged ? heard.push(message) : notices.push(`${channel} ${message}`),
      );
      await sub.subscribe(keys.servicesChanged, keys.cell('c1').notify, keys.cell('c2').notify);
      try {
        const version = Number(await conn.get(keys.servicesVersion));
        const routesVersion = (await routes.table(group, { versionOnly: true })).version;
        // Step one: routes gone in one write, specs removed from the cell with one notice, records
        // kept until the cell reports the instances stopped.
        const first = await reconciler.tearDown(['d1', 'd2', 'd3', 'd4'], fence, cells);
        expect([...first.decided]).to.have.members(['d1', 'd2', 'd3']);
        expect([...first.idle]).to.deep.equal([]);
        expect((await routes.table(group, { versionOnly: true })).version).to.equal(routesVersion + 1);
        for (const i of [0, 1, 2]) expect(await routes.route(group, firstPort + i)).to.equal(null);
        expect(await routes.route(group, firstPort + 3)).to.not.equal(null);
        expect(await conn.hkeys(keys.cell('c1').desired)).to.deep.equal([]);
        expect(await conn.hkeys(keys.cell('c2').desired)).to.have.members(['d4-0', 'd5-0']);
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(version + 3);
        for (const name of ['d1', 'd2', 'd3'])
          expect((await store.get(name))?.instances.map((i) => i.specWritten)).to.deep.equal([false]);
        await eventually(async () => heard.length >= 3, 5_000, 'three change messages');
        await new Promise((r) => setTimeout(r, 200));
        expect(notices).to.deep.equal([`${keys.cell('c1').notify} desired`]);

        // Still reported running: nothing to do, nothing written.
        const waiting = await reconciler.tearDown(['d1', 'd2', 'd3'], fence, cells);
        expect([...waiting.idle]).to.have.members(['d1', 'd2', 'd3']);
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(version + 3);

        // Reported gone: tombstones and the records removed, one commit.
        const gone = await reconciler.tearDown(['d1', 'd2', 'd3'], fence, cellsWith(['d4', 'd5']));
        expect([...gone.decided]).to.have.members(['d1', 'd2', 'd3']);
        for (const name of ['d1', 'd2', 'd3']) expect(await store.get(name)).to.equal(null);
        expect(await conn.hkeys(keys.volumeTombstones)).to.include.members(['c1/d1-0', 'c1/d2-0', 'c1/d3-0']);
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(version + 6);

        // A deposed leader: a newer one (token + 1) rewrote d4's route; the old one's teardown of
        // d4 is refused whole: route, spec and record stay.
        await store.change('d4', null, async (cur) => ({
          change: { record: { ...cur!, status: 'deleting' } },
          result: undefined,
        }));
        const newer = Number(await conn.incr(keys.leaderToken));
        await routes.upsert([
          {
            router_group_guid: group.guid,
            port: firstPort + 3,
            backend_ip: '127.0.0.1',
            backend_port: 31_003,
            backend_id: 'd4-0',
            role: 'primary',
            epoch: 1,
            state: 'active',
            weight: 1,
            mode: 'primary',
            modification_tag: { guid: 'service:d4', index: newer },
          },
        ]);
        const before = Number(await conn.get(keys.servicesVersion));
        try {
          await reconciler.tearDown(['d4'], fence, cells);
          expect.fail('a deposed leader must not tear down');
        } catch (err) {
          expect(isSfError(err) && err.code).to.equal(ErrorCode.StaleModificationTag);
        }
        expect(await routes.route(group, firstPort + 3)).to.not.equal(null);
        expect(await conn.hexists(keys.cell('c2').desired, 'd4-0')).to.equal(1);
        expect((await store.get('d4'))?.instances.map((i) => i.specWritten)).to.deep.equal([true]);
        // One whose route no newer leader wrote: the records' commit is refused by the fence.
        await store.change('d5', null, async (cur) => ({
          change: { record: { ...cur!, status: 'deleting' } },
          result: undefined,
        }));
        try {
          await reconciler.tearDown(['d5'], fence, cells);
          expect.fail('a deposed leader must not commit');
        } catch (err) {
          expect(isSfError(err) && err.code).to.equal(ErrorCode.StaleLeader);
        }
        expect(await conn.hexists(keys.cell('c2').desired, 'd5-0')).to.equal(1);
        expect((await store.get('d5'))?.instances.map((i) => i.specWritten)).to.deep.equal([true]);
        expect(Number(await conn.get(keys.servicesVersion))).to.equal(before + 1);
      } finally {
        sub.disconnect();
        await leader.stop();
      }
    });
  });
});
