import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { loadNativeBindings } from '../../../native-bindings';
import { readFdLimit } from '../../../router/connection-budget';
import { descriptorTableSize, reserveDescriptorTable } from '../../../router/descriptor-table';

describe('the descriptor table (descriptorTableSize, reserveDescriptorTable)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sf-fdtable-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads FDSize from a status file, and says nothing where there is none', () => {
    const status = join(dir, 'status');
    writeFileSync(status, 'Name:\tnode\nFDSize:\t4096\nGroups:\t\n');
    expect(descriptorTableSize(status)).to.equal(4096);
    writeFileSync(status, 'Name:\tnode\n');
    expect(descriptorTableSize(status)).to.equal(undefined);
    expect(descriptorTableSize(join(dir, 'missing'))).to.equal(undefined);
  });

  it('leaves the table as it is when SF_ROUTER_FD_RESERVE=off', () => {
    const before = descriptorTableSize();
    expect(reserveDescriptorTable(1 << 20, { SF_ROUTER_FD_RESERVE: 'off' })).to.equal(before);
  });

  it('grows it at once to what RLIMIT_NOFILE allows and no further, and reports what it holds', function () {
    const limit = readFdLimit();
    if (loadNativeBindings()?.reserveDescriptors === undefined || limit === undefined) this.skip();
    // A million more than any limit here: the table takes every descriptor the limit allows
    // (the kernel rounds a table up to a power of two) and the call does not fail.
    const size = reserveDescriptorTable(1_000_000, {});
    expect(size).to.equal(descriptorTableSize());
    expect(size)
      .to.be.at.least(limit)
      .and.at.most(2 * limit);
  });
});
