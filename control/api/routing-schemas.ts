/**
 * Request schemas of the routing API. Bodies are accepted as Cloud Foundry's routing-api client
 * and route-emitter send them (`models.TcpRouteMapping`, `models.RouterGroup` as Go's
 * encoding/json writes them: zero values included, `null` for nil pointers). The rich route fields
 * reuse the router's own schemas (protocol/route-model.ts), so the API can never accept a value a
 * router would refuse.
 */
import { z } from 'zod';
import { backendSchema, routeSchema, ROUTER_GROUP_NAME_PATTERN } from '../../protocol';
import { schemaError, ErrorCode } from '../../common';
import { ROUTE_LEVEL_FIELDS, type TcpRouteInput, type TcpRouteKeyInput } from '../state/tcp-route-types';

/** @default 120 s: Cloud Foundry's `max_ttl`; a registration without `ttl` gets it */
export const DEFAULT_MAX_ROUTE_TTL_SECONDS = 120;

/** @default 10000 records per create/delete request */
export const MAX_ROUTES_PER_REQUEST = 10_000;

export interface RoutingSchemaOptions {
  /** Largest `ttl` a registration may ask for, and the one it gets without `ttl`. */
  maxTtlSeconds: number;
  /**
   * Refuse fields no schema knows (a typo never passes silently). Cloud Foundry's Go handlers
   * ignore them; `sf control --routing-compat cf` does too.
   */
  refuseUnknownFields: boolean;
}

const port = routeSchema.shape.port;
const host = backendSchema.shape.host;

/** Go's encoding/json takes `null` for any field as its zero value; so do we (as "absent"). */
const nullable = <T extends z.ZodType>(schema: T) => schema.nullish().transform((v) => v ?? undefined);

const text = (max: number) => z.string({ error: 'must be a string' }).max(max, `must be at most ${max} characters`);

/** Accepted because every CF client sends it (`{"guid": "", "index": 0}`), then ignored: the server owns tags. */
const modificationTagSchema = z.object({
  guid: z.string({ error: 'must be a string' }).max(100),
  index: z.number({ error: 'must be a non-negative integer' }).int().min(0, 'must be a non-negative integer'),
});

/** Cloud Foundry's record fields that Service Foundry stores and returns (tcp-route-types.ts). */
const cfFields = {
  backend_tls_port: nullable(
    z
      .number({ error: 'must be an integer 0-65535' })
      .int('must be an integer 0-65535')
      .min(0, 'must be an integer 0-65535')
      .max(65535, 'must be an integer 0-65535'),
  ),
  instance_id: nullable(text(255)),
  isolation_segment: nullable(text(255)),
  backend_sni_hostname: nullable(text(253)),
  sni_rewrite_hostname: nullable(text(253)),
  terminate_frontend_tls: nullable(z.boolean({ error: 'must be true or false' })),
  alpns: nullable(text(1000)),
  enable_backend_mtls: nullable(z.boolean({ error: 'must be true or false' })),
};

const keyFields = {
  router_group_guid: z.string({ error: 'must be a router group guid' }).min(1).max(100),
  port,
  backend_ip: host,
  backend_port: port,
  backend_id: z.string().min(1).max(200).optional(),
  modification_tag: nullable(modificationTagSchema),
  ...cfFields,
};

/** Fields of a listed record that a delete accepts and ignores. */
const RETURNED_FIELDS = [
  'expires_at',
  'role',
  'weight',
  'epoch',
  'state',
  'backend_tls',
  ...ROUTE_LEVEL_FIELDS,
] as const;

function objectOf<T extends z.ZodRawShape>(shape: T, opts: RoutingSchemaOptions) {
  const obj = z.object(shape);
  return opts.refuseUnknownFields ? obj.strict() : obj.strip();
}

const listOf = <T extends z.ZodType>(item: T) =>
  z
    .array(item, { error: 'must be a JSON array of tcp routes' })
    .max(MAX_ROUTES_PER_REQUEST, `must hold at most ${MAX_ROUTES_PER_REQUEST} routes`);

/** The schemas of `tcp_routes/create` and `tcp_routes/delete` for one configuration. */
export function tcpRouteSchemas(opts: RoutingSchemaOptions) {
  const max = opts.maxTtlSeconds;
  const ttlMessage = `must be an integer 1-${max} (the configured max ttl); omit it for ${max}`;
  const route = objectOf(
    {
      ...keyFields,
      ttl: nullable(z.number({ error: ttlMessage }).int(ttlMessage).min(1, ttlMessage).max(max, ttlMessage)),
      // Our extension: a route that never expires. Never the result of leaving `ttl` out.
      permanent: z.boolean({ error: 'must be true or false' }).optional(),
      // Defaults are left to the store: an omitted field keeps the route's current value.
      role: backendSchema.shape.role.unwrap().optional(),
      weight: backendSchema.shape.weight.unwrap().optional(),
      epoch: backendSchema.shape.epoch.unwrap().optional(),
      state: backendSchema.shape.state.unwrap().optional(),
      backend_tls: backendSchema.shape.tls,
      mode: routeSchema.shape.mode.unwrap().optional(),
      sni: routeSchema.shape.sni,
      proxyProtocol: routeSchema.shape.proxyProtocol,
      tls: routeSchema.shape.tls,
      maxConnections: routeSchema.shape.maxConnections,
      connectTimeoutMs: routeSchema.shape.connectTimeoutMs,
      idleTimeoutMs: routeSchema.shape.idleTimeoutMs,
      drainTimeoutMs: routeSchema.shape.drainTimeoutMs,
    },
    opts,
  )
    .superRefine((r, ctx) => {
      if (r.permanent && r.ttl !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['permanent'], message: 'cannot be combined with ttl' });
      }
      // Cloud Foundry's validator: ALPN is negotiated by a router that terminates TLS, so it needs that.
      if (r.alpns && !r.terminate_frontend_tls) {
        ctx.addIssue({ code: 'custom', path: ['alpns'], message: 'needs terminate_frontend_tls: true' });
      }
    })
    .transform(({ modification_tag: _ignored, permanent, ttl, ...rest }): TcpRouteInput => {
      void _ignored;
      return { ...rest, ttl: permanent ? undefined : (ttl ?? max) };
    });
  const key = objectOf(
    {
      ...keyFields,
      // Sent by CF clients on delete too; a delete does not look at it.
      ttl: nullable(z.number({ error: 'must be a number' })),
      // What `GET tcp_routes` returns besides the key, so a listed record can be sent back as is.
      ...Object.fromEntries(RETURNED_FIELDS.map((name) => [name, z.unknown().optional()])),
    },
    opts,
  ).transform((item): TcpRouteKeyInput => {
    const { router_group_guid, port, backend_ip, backend_port, backend_id } = item;
    const { backend_tls_port, backend_sni_hostname, enable_backend_mtls } = item;
    // CF's key fields identify a record; the tag, the ttl and the other fields do not.
    return {
      router_group_guid,
      port,
      backend_ip,
      backend_port,
      ...(backend_tls_port !== undefined && { backend_tls_port }),
      ...(backend_sni_hostname !== undefined && { backend_sni_hostname }),
      ...(enable_backend_mtls !== undefined && { enable_backend_mtls }),
      ...(backend_id !== undefined && { backend_id }),
    };
  });
  return { create: listOf(route), delete: listOf(key) };
}

const routerGroupName = z
  .string({ error: 'must be a string' })
  .regex(ROUTER_GROUP_NAME_PATTERN, 'must be 1-63 of a-z, 0-9, _ and -, starting alphanumeric');

/** `POST /routing/v1/router_groups`: CF's client sends `guid` (empty) too; the server picks one. */
export function routerGroupCreateSchema(opts: RoutingSchemaOptions) {
  return objectOf(
    {
      guid: nullable(z.string({ error: 'must be a string' }).max(100)),
      name: routerGroupName,
      // Required, as in CF (`missing type in router group`).
      type: z.enum(['tcp', 'http'], { error: "must be 'tcp' or 'http'" }),
      reservable_ports: nullable(z.string({ error: "must be a string like '16000-16999'" }).max(1000)),
    },
    opts,
  ).transform(({ name, type, reservable_ports }) => ({ name, type, reservable_ports: reservable_ports ?? '' }));
}

/** `PUT /routing/v1/router_groups/:guid` reads only `reservable_ports`, as CF does; the rest is ignored. */
export const routerGroupUpdateSchema = z.looseObject({
  reservable_ports: z.string({ error: "must be a string like '16000-16999'" }).max(1000),
});

/** Validates a request body, naming the offending field under `prefix` on failure. */
export function validateBody<T extends z.ZodType>(schema: T, input: unknown, prefix: string): z.output<T> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw schemaError(parsed.error, ErrorCode.InvalidRequest, prefix);
  return parsed.data;
}
