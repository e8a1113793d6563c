/**
 * ServiceStore's record catch-up against a real redis-server: a store that hears change messages
 * brings its cached records up to date from the names they carry (one HMGET) and, when the
 * services version is ahead of the messages heard (a message still on its way on the
 * subscription's connection), waits briefly for them instead of reading every record (HGETALL).
 * Messages are handed to the store by hand here, so the test decides when one "arrives".
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { ServiceStore, servicesChangedMessage } from '../../../control/services/service-store';
import type { ServiceRecord } from '../../../control/services/service-types';
import { keyLayout } from '../../../protocol/keys';
import { startRedisServer, type RedisServerHandle } from '../../helpers/redis-server';

const keys = keyLayout('sf:');

function record(name: string): ServiceRecord {
  return { name, status: 'pending', instances: [] } as unknown as ServiceRecord;
}

/** Calls of a command since the server started, from INFO commandstats. */
async function calls(redis: Redis, command: string): Promise<number> {
  const info = await redis.info('commandstats');
  const match = new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(info);
  return match ? Number(match[1]) : 0;
}

/**
 * Runs `after` once a read of the services version on `conn` has answered, `delayMs` later (a
 * change message that arrives just after the version that announced it), and counts those reads.
 */
function onVersionRead(conn: Redis, after: () => void, delayMs: number): { reads: number } {
  const counter = { reads: 0 };
  const get = conn.get.bind(conn);
  let armed = true;
  conn.get = ((key: string) => {
    if (key !== keys.servicesVersion) return get(key);
    counter.reads++;
    return get(key).then((value) => {
      if (armed) {
        armed = false;
        setTimeout(after, delayMs);
      }
      return value;
    });
  }) as typeof conn.get;
  return counter;
}

describe('ServiceStore', function () {
  this.timeout(30_000);
  let server: RedisServerHandle;
  let admin: Redis;
  const conns: Redis[] = [];

  function connect(): Redis {
    const conn = new Redis(server.url);
    conns.push(conn);
    return conn;
  }

  before(async () => {
    server = await startRedisServer();
    admin = new Redis(server.url);
  });
  after(async () => {
    for (const c of conns) c.disconnect();
    admin.disconnect();
    await server.stop();
  });
  beforeEach(async () => {
    await admin.flushall();
  });

  /** A write by another process: the record and version move, the message is the caller's to deliver. */
  async function write(writer: ServiceStore, name: string): Promise<string> {
    await writer.change(name, null, async () => ({ change: { record: record(name) }, result: undefined }));
    const version = Number(await admin.get(keys.servicesVersion));
    return servicesChangedMessage(version, name);
  }

  describe('snapshot', () => {
    it('waits for a change message still on its way instead of reading every record', async () => {
      const writer = new ServiceStore(connect(), keys);
      const readerConn = connect();
      const reader = new ServiceStore(readerConn, keys);
      reader.noteChanged(await write(writer, 'a'));
      const first = await reader.snapshot();
      expect([...first.services.keys()]).to.deep.equal(['a']);

      const message = await write(writer, 'b');
      // The version read answers first; the message that names the change comes 1 ms later.
      const versionReads = onVersionRead(readerConn, () => reader.noteChanged(message), 1);
      const hgetallBefore = await calls(admin, 'hgetall');
      const hmgetBefore = await calls(admin, 'hmget');
      const caught = await reader.snapshot();

      expect(caught.version).to.equal(first.version + 1);
      expect([...caught.services.keys()].sort()).to.deep.equal(['a', 'b']);
      expect(await calls(admin, 'hgetall')).to.equal(hgetallBefore, 'no full read of the records');
      expect(await calls(admin, 'hmget')).to.equal(hmgetBefore + 1, 'one read of the named record');
      expect(versionReads.reads).to.be.greaterThan(1, 'the version was read again after the wait');
      expect([...(reader.changedBetween(first, caught) ?? [])]).to.deep.equal(['b']);
    });

    it('reads every record after the tries when the message never comes', async () => {
      const writer = new ServiceStore(connect(), keys);
      const reader = new ServiceStore(connect(), keys);
      reader.noteChanged(await write(writer, 'a'));
      const first = await reader.snapshot();
      await write(writer, 'b');
      const hgetallBefore = await calls(admin, 'hgetall');
      const caught = await reader.snapshot();
      expect([...caught.services.keys()].sort()).to.deep.equal(['a', 'b']);
      expect(await calls(admin, 'hgetall')).to.equal(hgetallBefore + 1);
      // A full read in between: which names changed is not known.
      expect(reader.changedBetween(first, caught)).to.equal(null);
    });

    it('reads every record at once in a store that hears no change messages', async () => {
      const writer = new ServiceStore(connect(), keys);
      const readerConn = connect();
      const reader = new ServiceStore(readerConn, keys);
      await write(writer, 'a');
      await reader.snapshot();
      await write(writer, 'b');
      const versionReads = onVersionRead(readerConn, () => undefined, 0);
      const hgetallBefore = await calls(admin, 'hgetall');
      const caught = await reader.snapshot();
      expect([...caught.services.keys()].sort()).to.deep.equal(['a', 'b']);
      expect(await calls(admin, 'hgetall')).to.equal(hgetallBefore + 1);
      expect(versionReads.reads).to.equal(1, 'no wait for messages it cannot hear');
    });
  });

  describe('changeJoined', () => {
    it('writes requests that wait together in one commit; one whose decision fails fails alone', async () => {
      const store = new ServiceStore(connect(), keys);
      const names = Array.from({ length: 20 }, (_, i) => `j${i}`);
      for (const name of names) await write(store, name);
      const version = Number(await admin.get(keys.servicesVersion));
      const commits = await calls(admin, 'evalsha');
      const outcomes = await Promise.allSettled(
        [...names, 'missing'].map((name) =>
          store.changeJoined(name, async (current) => {
            if (!current) throw new Error(`no ${name}`);
            return { change: { record: { ...current, status: 'deleting' } }, result: name };
          }),
        ),
      );
      expect(outcomes.map((o) => (o.status === 'fulfilled' ? o.value : 'failed'))).to.deep.equal([...names, 'failed']);
      for (const name of names)
        expect(JSON.parse((await admin.hget(keys.services, name))!)).to.include({ status: 'deleting' });
      // Twenty records, one change message (and one version) each, in far fewer commits than
      // requests: the first request's commit starts alone, the other nineteen share the next.
      expect(Number(await admin.get(keys.servicesVersion))).to.equal(version + 20);
      expect((await calls(admin, 'evalsha')) - commits).to.be.within(1, 2);
    });

    it('commits requests for a record already in the commit in the next one, after it', async () => {
      const store = new ServiceStore(connect(), keys);
      await write(store, 'dup');
      await write(store, 'other');
      const commits = await calls(admin, 'evalsha');
      const seen: Array<string | undefined> = [];
      const mark = (name: string, message: string) =>
        store.changeJoined(name, async (current) => {
          seen.push(current?.message ?? undefined);
          return { change: { record: { ...current!, message } }, result: message };
        });
      // The first request commits alone; then 'dup' twice and 'other': the second 'dup' waits for
      // the commit of the first and sees it.
      const results = await Promise.all([mark('other', 'a'), mark('dup', 'b'), mark('dup', 'c'), mark('other', 'd')]);
      expect(results).to.deep.equal(['a', 'b', 'c', 'd']);
      expect(JSON.parse((await admin.hget(keys.services, 'dup'))!)).to.include({ message: 'c' });
      expect(JSON.parse((await admin.hget(keys.services, 'other'))!)).to.include({ message: 'd' });
      expect(seen).to.include('b');
      // One commit each for: 'other' alone, then 'dup' and 'other', then the second 'dup'; none
      // tried again (two joined commits at once made each other retry).
      expect((await calls(admin, 'evalsha')) - commits).to.equal(3);
    });
  });
});
