/**
 * The routing API in Cloud Foundry's shape: `/routing/v1/router_groups` and
 * `/routing/v1/tcp_routes` (list, create, delete), plus two additions of ours per router group:
 * the table routers read (`/table`) and the routers serving it with their applied versions
 * (`/routers`). Each endpoint names the CF scope a UAA token needs there (routing-api
 * handlers/scopes.go); our own tokens need the Service Foundry scope.
 */
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import type { HttpServer } from './http-server';
import {
  DEFAULT_MAX_ROUTE_TTL_SECONDS,
  routerGroupCreateSchema,
  routerGroupUpdateSchema,
  tcpRouteSchemas,
  validateBody,
} from './routing-schemas';
import { ErrorCode, SfError } from '../../common';
import { CF_ROUTING_SCOPES } from './cf-scopes';

/**
 * `strict` (default) keeps Service Foundry's extra checks: unknown fields refused, a port change
 * that strands routes refused, a group with routes not deleted. `cf` behaves as Cloud Foundry does.
 */
export type RoutingCompat = 'strict' | 'cf';

/**
 * The `X-Cf-Warnings` header CF's `PUT router_groups/:guid` always sends (URL-encoded, as CF's
 * `url.QueryEscape` writes it): routes on ports outside the new range stop being routed.
 */
export const CF_PORT_WARNING = encodeURIComponent(
  'Warning: if routes are registered for ports that are not in the new range, modifying your load ' +
    'balancer to remove these ports will result in backends for those routes becoming inaccessible.',
).replace(/%20/g, '+');

export const ROUTING_COMPAT_MODES: readonly RoutingCompat[] = ['strict', 'cf'];

export interface RoutingApiOptions {
  /** @default 120 s: largest ttl, and the ttl of a registration without one (CF's max_ttl) */
  maxTtlSeconds?: number;
  /** @default 'strict' */
  compat?: RoutingCompat;
}

export interface RoutingApiDeps {
  groups: RouterGroupStore;
  routes: TcpRouteStore;
}

export function registerRoutingApi(
  server: HttpServer,
  { groups, routes }: RoutingApiDeps,
  options: RoutingApiOptions = {},
): void {
  const strict = (options.compat ?? 'strict') === 'strict';
  const schemaOpts = {
    maxTtlSeconds: options.maxTtlSeconds ?? DEFAULT_MAX_ROUTE_TTL_SECONDS,
    refuseUnknownFields: strict,
  };
  const tcpSchemas = tcpRouteSchemas(schemaOpts);
  const groupCreateSchema = routerGroupCreateSchema(schemaOpts);
  const checks = { refuseStranding: strict, refuseDeleteInUse: strict };
  const portsInUse = routes.portsInUse.bind(routes);
  const S = CF_ROUTING_SCOPES;

  server.route(
    'get',
    '/routing/v1/router_groups',
    'read',
    async (ctx) => {
      const name = ctx.query.get('name');
      if (!name) return { body: await groups.list() };
      const group = await groups.byName(name);
      // CF answers an unknown name with 404, never an empty list.
      if (!group) throw new SfError(ErrorCode.NotFound, `router group '${name}' not found`, 'name');
      return { body: [group] };
    },
    S.routerGroupsRead,
  );

  server.route(
    'post',
    '/routing/v1/router_groups',
    'admin',
    async (ctx) => {
      const input = validateBody(groupCreateSchema, await ctx.body(), '');
      const { group, created } = await groups.createOrGet(input);
      return { status: created ? 201 : 200, body: group };
    },
    S.routerGroupsWrite,
  );

  server.route(
    'get',
    '/routing/v1/router_groups/:guid',
    'read',
    async (ctx) => ({ body: await groups.mustGet(ctx.params.guid) }),
    S.routerGroupsRead,
  );

  server.route(
    'put',
    '/routing/v1/router_groups/:guid',
    'admin',
    async (ctx) => {
      const input = validateBody(routerGroupUpdateSchema, await ctx.body(), '');
      return {
        body: await groups.update(ctx.params.guid, input.reservable_ports, portsInUse, checks),
        headers: { 'X-Cf-Warnings': CF_PORT_WARNING },
      };
    },
    S.routerGroupsWrite,
  );

  server.route(
    'del',
    '/routing/v1/router_groups/:guid',
    'admin',
    async (ctx) => {
      await groups.delete(ctx.params.guid, portsInUse, checks);
      return { status: 204 };
    },
    S.routerGroupsWrite,
  );

  server.route(
    'get',
    '/routing/v1/router_groups/:guid/table',
    'read',
    async (ctx) => ({ body: await routes.table(await groups.mustGet(ctx.params.guid)) }),
    S.routerGroupsRead,
  );

  server.route(
    'get',
    '/routing/v1/router_groups/:guid/routers',
    'read',
    async (ctx) => ({ body: await routes.routers(await groups.mustGet(ctx.params.guid)) }),
    S.routerGroupsRead,
  );

  server.route(
    'get',
    '/routing/v1/tcp_routes',
    'read',
    async (ctx) => {
      // Repeatable, and an empty value asks for routes without a segment (CF's List handler).
      const segments = ctx.query.getAll('isolation_segment');
      return {
        body: await routes.list({
          routerGroupGuid: ctx.query.get('router_group_guid') ?? undefined,
          isolationSegments: segments.length > 0 ? segments : undefined,
        }),
      };
    },
    S.routesRead,
  );

  server.route(
    'post',
    '/routing/v1/tcp_routes/create',
    'write',
    async (ctx) => {
      const input = validateBody(tcpSchemas.create, await ctx.body(), 'tcp_routes');
      const stored = await routes.upsert(input);
      // CF answers 201 with no body; a client that asks (RFC 7240) gets the stored records.
      if (!/\breturn=representation\b/i.test(ctx.prefer)) return { status: 201 };
      return { status: 201, body: stored, headers: { 'Preference-Applied': 'return=representation' } };
    },
    S.routesWrite,
  );

  server.route(
    'post',
    '/routing/v1/tcp_routes/delete',
    'write',
    async (ctx) => {
      const input = validateBody(tcpSchemas.delete, await ctx.body(), 'tcp_routes');
      await routes.delete(input);
      return { status: 204 };
    },
    S.routesWrite,
  );
}
