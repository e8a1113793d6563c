import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { processesWorkingIn, removeStaleLockFile } from '../../../cell/stale-lock-file';

describe('removeStaleLockFile', function () {
  let dir: string;
  let worker: ChildProcess | undefined;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'sf-lock-'));
  });
  afterEach(() => {
    worker?.kill('SIGKILL');
    worker = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('removes a lock file whose pid is alive but works elsewhere (a reused pid)', async function () {
    // This very process is alive and is not working in the data directory.
    writeFileSync(path.join(dir, 'postmaster.pid'), `${process.pid}\n${dir}\n`);
    expect(await removeStaleLockFile(dir)).to.equal(true);
    expect(existsSync(path.join(dir, 'postmaster.pid'))).to.equal(false);
  });

  it('keeps the lock file while any process works in the data directory (a backend that outlived its postmaster)', async function () {
    writeFileSync(path.join(dir, 'postmaster.pid'), `999999\n${dir}\n`);
    worker = spawn('sleep', ['30'], { cwd: dir, stdio: 'ignore' });
    await new Promise((r) => worker!.once('spawn', r));
    expect(await processesWorkingIn(dir)).to.include(worker.pid);
    expect(await removeStaleLockFile(dir)).to.equal(false);
    expect(existsSync(path.join(dir, 'postmaster.pid'))).to.equal(true);
  });

  it('does nothing without a lock file', async function () {
    expect(await removeStaleLockFile(dir)).to.equal(false);
  });
});
