import { expect } from 'chai';
import type { Route } from '../../../protocol';
import type { CellSnapshot } from '../../../control/services/cell-directory';
import { RouteEmitter } from '../../../control/services/route-emitter';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { RouterGroupStore } from '../../../control/state/router-group-store';
import type { TcpRouteStore } from '../../../control/state/tcp-route-store';

describe('RouteEmitter', function () {
  describe('sync', function () {
    const route: Route = {
      port: 16000,
      mode: 'primary',
      backends: [
        { id: 'cache-0', host: '127.0.0.1', port: 20001, role: 'primary', weight: 1, epoch: 3, state: 'active' },
      ],
    } as Route;
    const service = {
      name: 'cache',
      port: 16000,
      routerGroupGuid: 'g1',
      instances: [{ id: 'cache-0', cell: 'cell-1', role: 'primary', epoch: 3, specWritten: true }],
    } as unknown as ServiceRecord;
    // The cell is registered again but has not re-sent its reports (a wiped store, a restart).
    const cells = new Map([['cell-1', { name: 'cell-1', alive: true, actual: new Map() } as unknown as CellSnapshot]]);

    function emitter(deleted: unknown[]): RouteEmitter {
      const groups = { get: async () => ({ guid: 'g1' }) } as unknown as RouterGroupStore;
      const routes = {
        route: async (_group: unknown, port: number) => (port === route.port ? route : null),
        upsert: async () => undefined,
        delete: async (keys: unknown[]) => void deleted.push(...keys),
      } as unknown as TcpRouteStore;
      return new RouteEmitter(groups, routes);
    }

    it('removes a backend whose instance no cell reports', async function () {
      const deleted: unknown[] = [];
      expect(await emitter(deleted).sync(service, cells, 1)).to.equal(true);
      expect(deleted).to.have.length(1);
    });

    it('keeps it during a cell grace, so the route does not close before the reports are back', async function () {
      const deleted: unknown[] = [];
      expect(await emitter(deleted).sync(service, cells, 1, { keepUnreported: true })).to.equal(false);
      expect(deleted).to.deep.equal([]);
    });
  });
});
