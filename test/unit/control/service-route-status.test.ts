import { expect } from 'chai';
import type { Route, RouterHeartbeat } from '../../../protocol';
import { serviceRouteStatus } from '../../../control/services/service-route-status';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { RouterGroupStore } from '../../../control/state/router-group-store';
import type { TcpRouteStore } from '../../../control/state/tcp-route-store';

describe('serviceRouteStatus', function () {
  const service = {
    name: 'cache',
    port: 16000,
    tls: 'required',
    routerGroup: 'default',
    routerGroupGuid: 'g1',
  } as unknown as ServiceRecord;
  const backend = { id: 'cache-0', host: '127.0.0.1', port: 20001, role: 'primary', weight: 1, epoch: 1 };
  const terminating = { mode: 'terminate', policy: 'required', certFile: '/c', keyFile: '/k' };

  function deps(
    route: Route | null,
    version: number,
    beats: Array<Pick<RouterHeartbeat, 'routerId' | 'version' | 'failedPorts'>>,
  ) {
    const groups = { get: async () => ({ guid: 'g1', name: 'default' }) } as unknown as RouterGroupStore;
    const routes = {
      route: async () => route,
      table: async () => ({ version, routes: [] }),
      routers: async () => beats,
    } as unknown as TcpRouteStore;
    return { groups, routes };
  }

  it('is not applied while the route is missing', async function () {
    const s = await serviceRouteStatus(service, deps(null, 4, [{ routerId: 'r1', version: 9 }]));
    expect(s).to.include({ present: false, applied: false, version: null });
  });

  it('is not applied while the route lacks the TLS section the service requires', async function () {
    const plain = { port: 16000, backends: [{ ...backend, state: 'active' }] } as unknown as Route;
    const s = await serviceRouteStatus(service, deps(plain, 4, [{ routerId: 'r1', version: 9 }]));
    expect(s).to.include({ present: false, applied: false, tls: 'off' });
  });

  it('is not applied while its only backend is fenced', async function () {
    const fenced = { port: 16000, tls: terminating, backends: [{ ...backend, state: 'fenced' }] } as unknown as Route;
    const s = await serviceRouteStatus(service, deps(fenced, 4, [{ routerId: 'r1', version: 9 }]));
    expect(s.applied).to.equal(false);
  });

  it('names the routers below the table version that carries the route', async function () {
    const route = {
      port: 16000,
      tls: terminating,
      backends: [{ ...backend, state: 'active', tls: true }],
    } as unknown as Route;
    const s = await serviceRouteStatus(
      service,
      deps(route, 7, [
        { routerId: 'r1', version: 7 },
        { routerId: 'r2', version: 6 },
      ]),
    );
    expect(s).to.include({ present: true, applied: false, version: 7, routers: 2, tls: 'required', tls_backends: 1 });
    expect(s.lagging).to.deep.equal(['r2']);
  });

  it('is applied once every live router reports that version', async function () {
    const route = { port: 16000, tls: terminating, backends: [{ ...backend, state: 'active' }] } as unknown as Route;
    const s = await serviceRouteStatus(
      service,
      deps(route, 7, [
        { routerId: 'r1', version: 7 },
        { routerId: 'r2', version: 8 },
      ]),
    );
    expect(s).to.include({ present: true, applied: true });
  });

  it('is not applied while a router cannot open the port, and names it with its reason', async function () {
    const route = { port: 16000, tls: terminating, backends: [{ ...backend, state: 'active' }] } as unknown as Route;
    const reason = 'cannot listen on 127.0.0.1:16000: EADDRINUSE';
    const s = await serviceRouteStatus(
      service,
      deps(route, 7, [
        { routerId: 'r1', version: 7, failedPorts: [{ port: 16000, reason }] },
        { routerId: 'r2', version: 7, failedPorts: [{ port: 16001, reason: 'another port' }] },
      ]),
    );
    expect(s).to.include({ present: true, applied: false });
    expect(s.lagging).to.deep.equal([]);
    expect(s.listen_failures).to.deep.equal([{ router: 'r1', reason }]);
  });
});
