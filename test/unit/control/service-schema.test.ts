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

  it('takes sidecars that serve the engine, each once, and names the field otherwise', function () {
    expect(parse({ name: 'a', sidecars: ['redis-exporter'] }).data?.sidecars).to.deep.equal(['redis-exporter']);
    expect(parse({ name: 'a', engine: 'postgres', sidecars: ['postgres-exporter'] }).success).to.equal(true);
    for (const bad of [
      { sidecars: ['postgres-exporter'] },
      { sidecars: ['redis-exporter', 'redis-exporter'] },
      { sidecars: ['node-exporter'] },
      { sidecars: 'redis-exporter' },
      { engine: 'tcp', command: { file: '/bin/true' }, sidecars: ['redis-exporter'] },
    ]) {
      const res = parse({ name: 'a', ...bad });
      expect(res.success, JSON.stringify(bad)).to.equal(false);
      expect(res.error?.issues[0]?.path[0], JSON.stringify(bad)).to.equal('sidecars');
    }
  });

  it('takes resources (memory_mb, cpus) and names the field of a bad one', function () {
    expect(parse({ name: 'a', resources: { memory_mb: 128, cpus: 0.5 } }).data?.resources).to.deep.equal({
      memory_mb: 128,
      cpus: 0.5,
    });
    for (const [bad, field] of [
      [{ memory_mb: 8 }, 'memory_mb'],
      [{ memory_mb: 1.5 }, 'memory_mb'],
      [{ cpus: 0 }, 'cpus'],
      [{ cpus: 'two' }, 'cpus'],
    ] as const) {
      const res = parse({ name: 'a', resources: bad });
      expect(res.error?.issues[0]?.path, JSON.stringify(bad)).to.deep.equal(['resources', field]);
    }
  });
});
