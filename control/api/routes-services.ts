/**
 * Service instances under `/v3/service_instances` (CF v3 style) and the leader status.
 * Creation is admitted by any control; placement and convergence are the leader's.
 */
import { serviceView } from '../services/service-view';
import { serviceRouteStatus } from '../services/service-route-status';
import { admitService, requestServiceDeletion, type ServiceAdmissionDeps } from '../services/service-admission';
import { serviceCreateSchema } from '../services/service-schema';
import type { LeaderElector } from '../leader/leader-elector';
import type { HttpServer } from './http-server';
import { validateBody } from './routing-schemas';
import { hasScope } from './auth';
import { serviceEventView } from './history-views';
import { ErrorCode, SfError } from '../../common';
import { pageRequest, paginate } from './pagination';

export interface ServicesApiDeps extends ServiceAdmissionDeps {
  elector: LeaderElector;
}

export function registerServicesApi(server: HttpServer, deps: ServicesApiDeps): void {
  const { store, directory } = deps;

  server.route('get', '/v3/service_instances', 'read', async (ctx) => {
    const req = pageRequest(ctx.query);
    // Views are built for the requested page only: the records come from the store's snapshot,
    // the reports of just the cells that page's instances are on.
    const page = paginate(await store.list(), req, '/v3/service_instances');
    const cells = await directory.cellsOf(page.resources);
    return { body: { pagination: page.pagination, resources: page.resources.map((r) => serviceView(r, cells)) } };
  });

  server.route('post', '/v3/service_instances', 'write', async (ctx) => {
    const req = validateBody(serviceCreateSchema, await ctx.body(), '');
    // A tcp service runs any command its creator names on a cell: that is an operator's power,
    // not a user's; cells may narrow it further with --tcp-allow.
    if (req.engine === 'tcp' && !(ctx.principal && hasScope(ctx.principal, 'admin')))
      throw new SfError(
        ErrorCode.Forbidden,
        "engine tcp runs any command on a cell: it needs the 'admin' scope",
        'engine',
      );
    const record = await admitService(deps, req);
    return { status: 201, body: serviceView(record, await directory.cellsOf([record])) };
  });

  server.route('get', '/v3/service_instances/:name', 'read', async (ctx) => {
    const record = await store.mustGet(ctx.params.name);
    return { body: serviceView(record, await directory.cellsOf([record])) };
  });

  // Whether every live router serves the service's route, with its TLS policy (sf create-service --wait).
  server.route('get', '/v3/service_instances/:name/route', 'read', async (ctx) => {
    const record = await store.mustGet(ctx.params.name);
    return { body: await serviceRouteStatus(record, deps) };
  });

  server.route('del', '/v3/service_instances/:name', 'write', async (ctx) => {
    const record = await requestServiceDeletion(store, ctx.params.name);
    return { status: 202, body: serviceView(record, await directory.cellsOf([record])) };
  });

  server.route('get', '/v3/service_instances/:name/events', 'read', async (ctx) => {
    await store.mustGet(ctx.params.name);
    return { body: { resources: (await store.events(ctx.params.name)).map(serviceEventView) } };
  });

  server.route('get', '/v3/leader', 'read', async () => {
    const holder = await deps.store.leaderHolder();
    const fence = deps.elector.current();
    return {
      body: {
        holder: holder?.holder ?? null,
        token: holder?.token ?? null,
        this_control: { id: deps.elector.holderId, leader: fence !== null },
      },
    };
  });
}
