import { expect } from 'chai';
import { parseRouteDelta } from '../../../router/route-source-redis';

describe('parseRouteDelta', function () {
  it('normalizes upserted routes with the route model defaults', function () {
    const d = parseRouteDelta(
      JSON.stringify({ version: 3, upserts: [{ port: 16000, backends: [{ host: 'h', port: 1 }] }], deletes: [16001] }),
    );
    expect(d.version).to.equal(3);
    expect(d.upserts[0].backends[0]).to.include({ id: 'h:1', role: 'primary', epoch: 1 });
    expect(d.deletes).to.deep.equal([16001]);
  });

  it('refuses malformed deltas whole', function () {
    for (const bad of [
      'nope',
      '{}',
      '{"version":1,"upserts":[],"deletes":["x"]}',
      '{"version":1,"upserts":[{"port":0,"backends":[]}],"deletes":[]}',
    ]) {
      expect(() => parseRouteDelta(bad), bad)
        .to.throw()
        .with.property('code')
        .that.matches(/^SF_ERR_/);
    }
  });
});
