import { expect } from 'chai';
import { serviceCreateSchema } from '../../../control/services';

describe('serviceCreateSchema', function () {
  const parse = (body: object) => serviceCreateSchema.safeParse({ engine: 'redis', ...body });

  it("refuses a name that ends in '-' (it would give instance ids like x--0)", function () {
    const res = parse({ name: 'x-' });
    expect(res.success).to.equal(false);
    expect(res.error?.issues[0]?.path).to.deep.equal(['name']);
    for (const ok of ['x', 'x1', 'a-b', 'a'.repeat(63)]) expect(parse({ name: ok }).success, ok).to.equal(true);
    for (const bad of ['-x', 'a'.repeat(64), 'A']) expect(parse({ name: bad }).success, bad).to.equal(false);
  });

  it('takes volume.size_mb, and the older volume.sizeMb as the same field', function () {
    expect(parse({ name: 'a', volume: { size_mb: 32 } }).data?.volume).to.deep.equal({ size_mb: 32 });
    expect(parse({ name: 'a', volume: { sizeMb: 32 } }).data?.volume).to.deep.equal({ size_mb: 32 });
    expect(parse({ name: 'a' }).data?.volume).to.deep.equal({ size_mb: 256 });
    const zero = parse({ name: 'a', volume: { sizeMb: 0 } });
    expect(zero.error?.issues[0]?.path).to.deep.equal(['volume', 'size_mb']);
  });
});
