import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import {
  defaultListenBacklog,
  FALLBACK_LISTEN_BACKLOG,
  listenBacklogCeiling,
  resolveListenBacklog,
} from '../../../common/listen-backlog';

describe('listen backlog', () => {
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sf-backlog-'));
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  function file(text: string): string {
    const path = join(dir, `somaxconn-${Math.random()}`);
    writeFileSync(path, text);
    return path;
  }

  it('defaults to the kernel ceiling read from net.core.somaxconn', () => {
    expect(listenBacklogCeiling(file('4096\n'))).to.equal(4096);
    expect(defaultListenBacklog(file('8192\n'))).to.equal(8192);
  });

  it("falls back to Node's 511 where the ceiling is missing or not a positive integer", () => {
    for (const text of ['', 'lots\n', '0\n', '-5\n', '12.5\n']) {
      expect(listenBacklogCeiling(file(text)), text).to.equal(undefined);
      expect(defaultListenBacklog(file(text)), text).to.equal(FALLBACK_LISTEN_BACKLOG);
    }
    expect(defaultListenBacklog(join(dir, 'absent'))).to.equal(FALLBACK_LISTEN_BACKLOG);
  });

  it('reports what the kernel holds: a request above the ceiling is cut to it', () => {
    expect(resolveListenBacklog(100, 4096)).to.deep.equal({ requested: 100, effective: 100, ceiling: 4096 });
    expect(resolveListenBacklog(10_000, 4096)).to.deep.equal({ requested: 10_000, effective: 4096, ceiling: 4096 });
    expect(resolveListenBacklog(10_000, undefined)).to.deep.equal({ requested: 10_000, effective: 10_000 });
  });
});
