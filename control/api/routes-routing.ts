/**
 * The routing API in Cloud Foundry's shape: `/routing/v1/router_groups` and
 * `/routing/v1/tcp_routes` (list, create, delete), plus two additions of ours per router group:
 * the table routers read (`/table`) and the routers serving it with their applied versions
 * (`/routers`).
 */
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import type { HttpServer } from './http-server';
import {
  routerGroupCreateSchema,
  routerGroupUpdateSchema,
  tcpRouteCreateSchema,
  tcpRouteDeleteSchema,
  validateBody,
} from './routing-schemas';

export interface RoutingApiDeps {
  groups: RouterGroupStore;
  routes: TcpRouteStore;
}

export function registerRoutingApi(server: HttpServer, { groups, routes }: RoutingApiDeps): void {
  const portsInUse = routes.portsInUse.bind(routes);

  server.route('get', '/routing/v1/router_groups', 'read', async (ctx) => {
    const name = ctx.query.get('name');
    const all = await groups.list();
    return { body: name ? all.filter((g) => g.name === name) : all };
  });

  server.route('post', '/routing/v1/router_groups', 'admin', async (ctx) => {
    const input = validateBody(routerGroupCreateSchema, await ctx.body(), '');
    return { status: 201, body: await groups.create(input) };
  });

  server.route('get', '/routing/v1/router_groups/:guid', 'read', async (ctx) => ({
    body: await groups.mustGet(ctx.params.guid),
  }));

  server.route('put', '/routing/v1/router_groups/:guid', 'admin', async (ctx) => {
    const input = validateBody(routerGroupUpdateSchema, await ctx.body(), '');
    return { body: await groups.update(ctx.params.guid, input.reservable_ports, portsInUse) };
  });

  server.route('del', '/routing/v1/router_groups/:guid', 'admin', async (ctx) => {
    await groups.delete(ctx.params.guid, portsInUse);
    return { status: 204 };
  });

  server.route('get', '/routing/v1/router_groups/:guid/table', 'read', async (ctx) => ({
    body: await routes.table(await groups.mustGet(ctx.params.guid)),
  }));

  server.route('get', '/routing/v1/router_groups/:guid/routers', 'read', async (ctx) => ({
    body: await routes.routers(await groups.mustGet(ctx.params.guid)),
  }));

  server.route('get', '/routing/v1/tcp_routes', 'read', async (ctx) => ({
    body: await routes.list(ctx.query.get('router_group_guid') ?? undefined),
  }));

  server.route('post', '/routing/v1/tcp_routes/create', 'write', async (ctx) => {
    const input = validateBody(tcpRouteCreateSchema, await ctx.body(), 'tcp_routes');
    return { status: 201, body: await routes.upsert(input) };
  });

  server.route('post', '/routing/v1/tcp_routes/delete', 'write', async (ctx) => {
    const input = validateBody(tcpRouteDeleteSchema, await ctx.body(), 'tcp_routes');
    await routes.delete(input);
    return { status: 204 };
  });
}
