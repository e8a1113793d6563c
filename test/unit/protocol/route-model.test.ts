import { expect } from 'chai';
import { ErrorCode, parseRouteTable, parseRouteTableJson, type SfError } from '../../../router';

function errorOf(fn: () => unknown): SfError {
  try {
    fn();
  } catch (err) {
    return err as SfError;
  }
  throw new Error('expected an error');
}

describe('route-model', () => {
  describe('parseRouteTable', () => {
    it('fills in the defaults of DESIGN.md', () => {
      const t = parseRouteTable({ routes: [{ port: 16379, backends: [{ host: '127.0.0.1', port: 6379 }] }] });
      expect(t.version).to.equal(0);
      expect(t.routes[0]).to.include({ port: 16379, mode: 'primary', routerGroup: 'default' });
      expect(t.routes[0]!.backends[0]).to.deep.equal({
        id: '127.0.0.1:6379',
        host: '127.0.0.1',
        port: 6379,
        role: 'primary',
        weight: 1,
        epoch: 1,
        state: 'active',
      });
    });

    it('names the field of a bad port', () => {
      const err = errorOf(() => parseRouteTable({ routes: [{ port: 1, backends: [{ host: 'a', port: 70000 }] }] }));
      expect(err.code).to.equal(ErrorCode.InvalidRouteTable);
      expect(err.field).to.equal('routes[0].backends[0].port');
      expect(err.message).to.equal('routes[0].backends[0].port must be an integer 1-65535');
    });

    it('refuses an unknown mode naming the field', () => {
      const err = errorOf(() => parseRouteTable({ routes: [{ port: 1, mode: 'random', backends: [] }] }));
      expect(err.field).to.equal('routes[0].mode');
    });

    it('refuses unknown fields so typos are not silently ignored', () => {
      const err = errorOf(() => parseRouteTable({ routes: [{ port: 1, backends: [], maxConnection: 5 }] }));
      expect(err.field).to.equal('routes[0]');
      expect(err.message).to.contain("'maxConnection'");
    });

    it('refuses two routes on one port', () => {
      const err = errorOf(() =>
        parseRouteTable({
          routes: [
            { port: 5, backends: [] },
            { port: 5, backends: [] },
          ],
        }),
      );
      expect(err.code).to.equal(ErrorCode.RouteConflict);
      expect(err.field).to.equal('routes[1].port');
    });

    it('refuses duplicate backend ids in a route', () => {
      const b = { host: 'h', port: 1 };
      const err = errorOf(() => parseRouteTable({ routes: [{ port: 5, backends: [b, b] }] }));
      expect(err.field).to.equal('routes[0].backends[1].id');
    });
  });

  describe('parseRouteTableJson', () => {
    it('reports a JSON syntax error as an invalid table', () => {
      const err = errorOf(() => parseRouteTableJson('{"routes": ['));
      expect(err.code).to.equal(ErrorCode.InvalidRouteTable);
      expect(err.field).to.equal('file');
    });
  });
});
