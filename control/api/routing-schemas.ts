/**
 * Request schemas of the routing API. The rich route fields reuse the router's own schemas
 * (router/route-model.ts) so the API can never accept a value a router would refuse.
 */
import { z } from 'zod';
import { backendSchema, routeSchema, ROUTER_GROUP_NAME_PATTERN } from '../../protocol';
import { schemaError, ErrorCode } from '../../common';

/** @default 86400 s: a TTL longer than a day is almost certainly a unit mistake */
export const MAX_ROUTE_TTL_SECONDS = 86_400;

/** @default 10000 records per create/delete request */
export const MAX_ROUTES_PER_REQUEST = 10_000;

const port = routeSchema.shape.port;
const host = backendSchema.shape.host;

const modificationTagSchema = z
  .object({
    guid: z.string({ error: 'must be a string' }).min(1).max(100),
    index: z.number({ error: 'must be a non-negative integer' }).int().min(0, 'must be a non-negative integer'),
  })
  .strict();

const keyFields = {
  router_group_guid: z.string({ error: 'must be a router group guid' }).min(1).max(100),
  port,
  backend_ip: host,
  backend_port: port,
  backend_id: z.string().min(1).max(200).optional(),
  modification_tag: modificationTagSchema.optional(),
};

export const tcpRouteKeySchema = z.object(keyFields).strict();

export const tcpRouteSchema = z
  .object({
    ...keyFields,
    ttl: z
      .number({ error: `must be an integer 0-${MAX_ROUTE_TTL_SECONDS}` })
      .int(`must be an integer 0-${MAX_ROUTE_TTL_SECONDS}`)
      .min(0, `must be an integer 0-${MAX_ROUTE_TTL_SECONDS}`)
      .max(MAX_ROUTE_TTL_SECONDS, `must be an integer 0-${MAX_ROUTE_TTL_SECONDS}`)
      .optional(),
    // Defaults are left to the store: an omitted field keeps the route's current value.
    role: backendSchema.shape.role.unwrap().optional(),
    weight: backendSchema.shape.weight.unwrap().optional(),
    epoch: backendSchema.shape.epoch.unwrap().optional(),
    state: backendSchema.shape.state.unwrap().optional(),
    mode: routeSchema.shape.mode.unwrap().optional(),
    sni: routeSchema.shape.sni,
    proxyProtocol: routeSchema.shape.proxyProtocol,
    tls: routeSchema.shape.tls,
    maxConnections: routeSchema.shape.maxConnections,
    connectTimeoutMs: routeSchema.shape.connectTimeoutMs,
    idleTimeoutMs: routeSchema.shape.idleTimeoutMs,
    drainTimeoutMs: routeSchema.shape.drainTimeoutMs,
  })
  .strict();

const listOf = <T extends z.ZodType>(item: T) =>
  z
    .array(item, { error: 'must be a JSON array of tcp routes' })
    .min(1, 'must hold at least one route')
    .max(MAX_ROUTES_PER_REQUEST, `must hold at most ${MAX_ROUTES_PER_REQUEST} routes`);

export const tcpRouteCreateSchema = listOf(tcpRouteSchema);
export const tcpRouteDeleteSchema = listOf(tcpRouteKeySchema);

export const routerGroupCreateSchema = z
  .object({
    name: z
      .string({ error: 'must be a string' })
      .regex(ROUTER_GROUP_NAME_PATTERN, 'must be 1-63 of a-z, 0-9, _ and -, starting alphanumeric'),
    type: z.literal('tcp', { error: "must be 'tcp'" }).default('tcp'),
    reservable_ports: z.string({ error: "must be a string like '16000-16999'" }).min(1).max(1000),
  })
  .strict();

export const routerGroupUpdateSchema = routerGroupCreateSchema.pick({ reservable_ports: true }).strict();

/** Validates a request body, naming the offending field under `prefix` on failure. */
export function validateBody<T extends z.ZodType>(schema: T, input: unknown, prefix: string): z.output<T> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw schemaError(parsed.error, ErrorCode.InvalidRequest, prefix);
  return parsed.data;
}
