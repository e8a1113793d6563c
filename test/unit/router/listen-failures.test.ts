import { expect } from 'chai';
import { ErrorCode, SfError } from '../../../common/errors';
import { ListenFailures } from '../../../router/listen-failures';

describe('ListenFailures', function () {
  const busy = (port: number) => ({
    port,
    error: new SfError(ErrorCode.ListenFailed, `cannot listen on 127.0.0.1:${port}: EADDRINUSE`),
  });
  const all = (): boolean => true;

  it('reports a failure once while it repeats, and again when its reason changes', function () {
    const f = new ListenFailures();
    expect(f.update([busy(5000)], [], all, 1).fresh).to.have.length(1);
    expect(f.update([busy(5000)], [], all, 2).fresh).to.have.length(0);
    const other = { port: 5000, error: new SfError(ErrorCode.ListenFailed, 'cannot listen on 127.0.0.1:5000: EACCES') };
    const changed = f.update([other], [], all, 3).fresh;
    expect(changed).to.have.length(1);
    // The failure has lasted since the first attempt.
    expect(changed[0]).to.include({ port: 5000, since: 1 });
  });

  it('forgets a port that opened, and says it recovered', function () {
    const f = new ListenFailures();
    f.update([busy(5000), busy(5001)], [], all);
    expect(f.update([], [5000], all).recovered).to.deep.equal([5000]);
    expect(f.list().map((x) => x.port)).to.deep.equal([5001]);
  });

  it('forgets a port that left the table', function () {
    const f = new ListenFailures();
    f.update([busy(5000), busy(5001)], [], all);
    f.update([], [], (port) => port !== 5001);
    expect(f.size).to.equal(1);
    expect(f.list()[0]!.port).to.equal(5000);
  });

  it('lists at most the limit, and counts every failure', function () {
    const f = new ListenFailures();
    f.update(
      Array.from({ length: 150 }, (_, i) => busy(5000 + i)),
      [],
      all,
    );
    expect(f.size).to.equal(150);
    expect(f.list()).to.have.length(100);
  });
});
