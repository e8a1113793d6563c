/**
 * Instances run unprivileged, with an environment built from their
 * spec only, in volumes only their user can read. Checked on real processes through /proc.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { ProcessExecutor } from '../../cell/executor-process';
import { createEngineRegistry } from '../../cell/engine-registry';
import { TcpEngine } from '../../cell/engine-tcp';
import { lookupUser } from '../../cell/run-command';
import { ErrorCode } from '../../common/errors';
import { spec, tempCellDir } from '../helpers/cell-harness';

/** A listener that never exits by itself, written in Python so any user can run it. */
const LISTENER = [
  '-c',
  "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{host}',{port}))\ns.listen()\ntime.sleep(600)",
];
const PYTHON = '/usr/bin/python3';

async function procUids(pid: number): Promise<number[]> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const line = status.split('\n').find((l) => l.startsWith('Uid:')) ?? '';
  return line.split(/\s+/).slice(1).map(Number);
}

async function procEnv(pid: number): Promise<Record<string, string>> {
  const text = await readFile(`/proc/${pid}/environ`, 'utf8');
  return Object.fromEntries(
    text
      .split('\0')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
}

const SECRET_ENV = {
  SF_API_TOKEN: 'sf_test_admin_token_that_must_not_leak',
  SF_REDIS_URL: 'redis://control:hunter2@127.0.0.1:1/0',
  SF_REDIS_CREDENTIALS_FILE: '/nonexistent/credentials.json',
};

describe('instance isolation (process executor)', function () {
  this.timeout(180_000);
  const root = process.getuid?.() === 0;
  let cell: { dir: string; remove(): Promise<void> };
  let executor: ProcessExecutor;
  const saved: Record<string, string | undefined> = {};

  before(function () {
    if (!root) this.skip(); // the users below only exist for a root cell; a non-root cell runs instances as itself
  });

  beforeEach(async () => {
    // The cell's environment holds secrets; instances must see none of it.
    for (const [k, v] of Object.entries(SECRET_ENV)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    cell = await tempCellDir('sf-isolation-');
    executor = new ProcessExecutor({ dataDir: cell.dir, portRange: { from: 21000, to: 21999 } });
  });

  afterEach(async () => {
    for (const h of executor.handles()) await executor.kill(h.instanceId);
    await cell.remove();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  async function expectIsolated(pid: number, user: string, dataDir: string, volumeDir: string): Promise<void> {
    const uid = lookupUser(user)?.uid;
    expect(uid, `system user ${user}`).to.be.a('number').and.not.equal(0);
    expect(await procUids(pid)).to.deep.equal([uid, uid, uid, uid]);
    const env = await procEnv(pid);
    for (const name of Object.keys(SECRET_ENV)) expect(env, `env of pid ${pid}`).to.not.have.property(name);
    for (const name of Object.keys(env))
      expect(name).to.match(/^(PATH|LANG|LANGUAGE|LC_ALL|LC_CTYPE|TZ|HOME|USER|LOGNAME|PORT|DATA_DIR|PG\w+)$/);
    const data = await stat(dataDir);
    expect((data.mode & 0o777).toString(8), 'data dir mode').to.equal('700');
    expect(data.uid, 'data dir owner').to.equal(uid);
    const volume = await stat(volumeDir);
    expect((volume.mode & 0o777).toString(8), 'volume dir mode').to.equal('711');
    expect(volume.uid, 'volume dir owner').to.equal(0);
    for (const file of ['sf-instance.json', 'instance.log']) {
      const st = await stat(path.join(volumeDir, file));
      expect((st.mode & 0o777).toString(8), `${file} mode`).to.equal('600');
      expect(st.uid, `${file} owner`).to.equal(0);
    }
  }

  it('runs a tcp command as sf-instance with only its spec in the environment', async () => {
    const h = await executor.start(
      spec({ instanceId: 't-0', engine: 'tcp', command: { file: PYTHON, args: LISTENER } }),
    );
    await expectIsolated(h.pid, 'sf-instance', h.dataDir, h.volumeDir);
    const env = await procEnv(h.pid);
    expect(env.PORT).to.equal(String(h.port));
    expect(env.DATA_DIR).to.equal(h.dataDir);
    expect(env.HOME).to.equal(h.dataDir);
  });

  it('runs redis-server as redis, its configuration readable by it alone', async () => {
    const h = await executor.start(spec({ instanceId: 'r-0', engine: 'redis' }));
    await expectIsolated(h.pid, 'redis', h.dataDir, h.volumeDir);
    const conf = await stat(path.join(h.dataDir, 'redis.conf'));
    expect((conf.mode & 0o777).toString(8)).to.equal('600');
  });

  it('runs postgres as postgres with a clean environment', async () => {
    const h = await executor.start(spec({ instanceId: 'p-0', engine: 'postgres' }));
    await expectIsolated(h.pid, 'postgres', h.dataDir, h.volumeDir);
  });

  it('refuses a tcp command outside the cell allow-list', async () => {
    const allowList = new ProcessExecutor({
      dataDir: cell.dir,
      portRange: { from: 21000, to: 21999 },
      engines: createEngineRegistry({ tcp: { allow: ['/bin/true'] } }),
    });
    const err = await allowList
      .start(spec({ instanceId: 't-1', engine: 'tcp', command: { file: PYTHON, args: LISTENER } }))
      .catch((e: { code?: string; message: string }) => e);
    expect(err).to.have.property('code', ErrorCode.TcpCommandNotAllowed);
    expect(allowList.handles()).to.have.length(0);
  });

  it('says how to create the tcp user when it does not exist, and runs nothing as root', async () => {
    const engine = new TcpEngine({ systemUser: 'sf-no-such-user' });
    const availability = await engine.available();
    expect(availability.ok).to.equal(false);
    expect(availability.reason).to.match(/sf-no-such-user.*useradd/);
    const missing = new ProcessExecutor({
      dataDir: cell.dir,
      portRange: { from: 21000, to: 21999 },
      engines: { ...createEngineRegistry(), tcp: engine },
    });
    const err = await missing
      .start(spec({ instanceId: 't-2', engine: 'tcp', command: { file: PYTHON, args: LISTENER } }))
      .catch((e: { code?: string }) => e);
    expect(err).to.have.property('code', ErrorCode.EngineUnavailable);
  });
});
