import { spawnSync } from 'node:child_process';
import { expect } from 'chai';
import { withDescriptorTable } from '../../../cell/engine-fd-table';
import { findBinary } from '../../../cell/run-command';

/** Runs `launch` as the executors do (file and args, no shell of ours) and returns its stdout. */
function run(launch: { file: string; args: string[] }): { status: number | null; stdout: string } {
  const r = spawnSync(launch.file, launch.args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout };
}

describe('engines start with a grown descriptor table (withDescriptorTable)', () => {
  let bash: string | undefined;
  before(async function () {
    bash = await findBinary('bash');
    if (!bash) this.skip();
  });

  const fdSize = (status: string): number => Number(/^FDSize:\s+(\d+)$/m.exec(status)?.[1]);
  const cat = { file: 'cat', args: ['/proc/self/status'], stopSignal: 'SIGTERM' as const };

  it('execs the engine itself, with the table grown and no descriptor left open', () => {
    const r = run(withDescriptorTable(cat, 5000, bash!));
    expect(r.status).to.equal(0);
    expect(r.stdout).to.match(/^Name:\s+cat$/m);
    expect(fdSize(r.stdout)).to.be.at.least(5000);
    const listed = run(withDescriptorTable({ ...cat, file: 'ls', args: ['/proc/self/fd'] }, 5000, bash!));
    expect(listed.stdout.trim().split('\n').map(Number)).to.satisfy((fds: number[]) => fds.every((fd) => fd < 256));
  });

  it('passes arguments through untouched, spaces and quotes included', () => {
    const args = ['a b', '"q"', "it's", '$HOME', '-c'];
    const r = run(withDescriptorTable({ ...cat, file: 'printf', args: ['%s\\n', ...args] }, 1000, bash!));
    expect(r.stdout.split('\n').slice(0, args.length)).to.deep.equal(args);
  });

  it('still starts the engine when the limit is below the slots asked for', () => {
    const r = run(withDescriptorTable(cat, 50_000_000, bash!));
    expect(r.status).to.equal(0);
    expect(r.stdout).to.match(/^Name:\s+cat$/m);
  });

  it('refuses a slot count that is not a positive integer', () => {
    expect(() => withDescriptorTable(cat, 0, 'bash')).to.throw(RangeError);
    expect(() => withDescriptorTable(cat, 1.5, 'bash')).to.throw(RangeError);
  });
});
