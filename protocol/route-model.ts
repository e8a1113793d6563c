/**
 * The route model: the one contract shared by the router, the control plane and route files.
 * Types are derived from the schema so validation and typing can never drift apart.
 */
import { z } from 'zod';
import { ErrorCode, SfError, schemaError } from '../common/errors';

/** Defaults for per-route limits; a route may override each. */
export const DEFAULT_ROUTE_LIMITS = {
  /** @default 10000 concurrent client connections per route */
  maxConnections: 10_000,
  /** @default 5000 ms to establish the backend connection before trying another backend */
  connectTimeoutMs: 5_000,
  /** @default 0 (disabled): database pools keep idle connections for hours; keepalive finds dead peers */
  idleTimeoutMs: 0,
  /** @default 30000 ms a removed or draining backend's connections may live on */
  drainTimeoutMs: 30_000,
} as const;

export { DEFAULT_ROUTER_GROUP } from './route-defaults';
import { DEFAULT_ROUTER_GROUP } from './route-defaults';

const hostSchema = z
  .string()
  .min(1, 'must be a non-empty host name or IP address')
  .max(253, 'must be at most 253 characters');

const portSchema = z
  .number({ error: 'must be an integer 1-65535' })
  .int('must be an integer 1-65535')
  .min(1, 'must be an integer 1-65535')
  .max(65535, 'must be an integer 1-65535');

const nonNegativeInt = (what: string) =>
  z
    .number({ error: `must be ${what}` })
    .int(`must be ${what}`)
    .min(0, `must be ${what}`);

export const backendSchema = z
  .object({
    id: z.string().min(1).max(200).optional(),
    host: hostSchema,
    port: portSchema,
    role: z.enum(['primary', 'replica'], { error: "must be 'primary' or 'replica'" }).default('primary'),
    weight: z
      .number({ error: 'must be an integer 0-1000' })
      .int()
      .min(0)
      .max(1000, 'must be an integer 0-1000')
      .default(1),
    epoch: nonNegativeInt('a non-negative integer').default(1),
    state: z
      .enum(['active', 'draining', 'fenced'], { error: "must be 'active', 'draining' or 'fenced'" })
      .default('active'),
  })
  .strict();

export const routeSchema = z
  .object({
    port: portSchema,
    routerGroup: z.string().min(1).max(100).default(DEFAULT_ROUTER_GROUP),
    mode: z
      .enum(['primary', 'round-robin', 'least-conn'], {
        error: "must be 'primary', 'round-robin' or 'least-conn'",
      })
      .default('primary'),
    backends: z.array(backendSchema).max(1000),
    /** Hostnames served on a shared TLS port, chosen by the ClientHello's SNI (no termination). */
    sni: z
      .array(
        z
          .string()
          .regex(
            /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/,
            'must be a host name, optionally starting with *.',
          ),
      )
      .max(100)
      .optional(),
    proxyProtocol: z.union([z.literal(1), z.literal(2)], { error: 'must be 1 or 2' }).optional(),
    /** TLS towards the backend. */
    tls: z.boolean().optional(),
    maxConnections: z.number().int().min(1).max(10_000_000).optional(),
    connectTimeoutMs: z.number().int().min(1).max(3_600_000).optional(),
    idleTimeoutMs: z.number().int().min(0).max(604_800_000).optional(),
    drainTimeoutMs: z.number().int().min(0).max(86_400_000).optional(),
  })
  .strict();

export const routeTableSchema = z
  .object({
    version: nonNegativeInt('a non-negative integer').default(0),
    routes: z.array(routeSchema).max(100_000),
  })
  .strict();

export type BackendInput = z.input<typeof backendSchema>;
export type RouteInput = z.input<typeof routeSchema>;
export type RouteTableInput = z.input<typeof routeTableSchema>;

export type BackendRole = 'primary' | 'replica';
export type BackendState = 'active' | 'draining' | 'fenced';
export type RouteMode = 'primary' | 'round-robin' | 'least-conn';

export interface Backend {
  id: string;
  host: string;
  port: number;
  role: BackendRole;
  weight: number;
  epoch: number;
  state: BackendState;
}

/** What a route sets besides its port, group and backends. */
export interface RouteSettings {
  mode: RouteMode;
  sni?: string[];
  proxyProtocol?: 1 | 2;
  tls?: boolean;
  maxConnections?: number;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  drainTimeoutMs?: number;
}

export interface Route extends RouteSettings {
  port: number;
  routerGroup: string;
  backends: Backend[];
}

export interface RouteTable {
  version: number;
  routes: Route[];
}

function normalizeBackend(b: z.output<typeof backendSchema>): Backend {
  return { ...b, id: b.id ?? `${b.host}:${b.port}` };
}

/** Applies defaults and fills in backend ids; the result is what the router serves. */
export function normalizeRoute(r: z.output<typeof routeSchema>): Route {
  const route: Route = { ...r, backends: r.backends.map(normalizeBackend) };
  return route;
}

/**
 * Checks the rules a schema cannot express: a port carries one route, or several told apart by
 * server name (SNI) with at most one default route without names; backend ids are unique per route.
 */
export function checkTableInvariants(table: RouteTable): void {
  const byPort = new Map<number, { names: Map<string, number>; defaultAt: number | undefined }>();
  table.routes.forEach((route, i) => {
    const seen = byPort.get(route.port) ?? { names: new Map<string, number>(), defaultAt: undefined };
    byPort.set(route.port, seen);
    const names = route.sni ?? [];
    if (names.length === 0) {
      if (seen.defaultAt !== undefined) {
        throw new SfError(
          ErrorCode.RouteConflict,
          `routes[${i}].port ${route.port} is already used by routes[${seen.defaultAt}]; routes sharing a port need distinct sni names`,
          `routes[${i}].port`,
        );
      }
      seen.defaultAt = i;
    }
    names.forEach((name, k) => {
      const lower = name.toLowerCase();
      const prev = seen.names.get(lower);
      if (prev !== undefined) {
        throw new SfError(
          ErrorCode.RouteConflict,
          `routes[${i}].sni[${k}] '${name}' on port ${route.port} is already used by routes[${prev}]`,
          `routes[${i}].sni[${k}]`,
        );
      }
      seen.names.set(lower, i);
    });
    const ids = new Set<string>();
    route.backends.forEach((b, j) => {
      if (ids.has(b.id)) {
        throw new SfError(
          ErrorCode.InvalidRouteTable,
          `routes[${i}].backends[${j}].id '${b.id}' appears twice in the route`,
          `routes[${i}].backends[${j}].id`,
        );
      }
      ids.add(b.id);
    });
  });
}

/** Validates untrusted input (a parsed route file or API body) into a normalized table. */
export function parseRouteTable(input: unknown): RouteTable {
  const parsed = routeTableSchema.safeParse(input);
  if (!parsed.success) throw schemaError(parsed.error, ErrorCode.InvalidRouteTable);
  const table: RouteTable = { version: parsed.data.version, routes: parsed.data.routes.map(normalizeRoute) };
  checkTableInvariants(table);
  return table;
}

/** Validates one route (for example from the HTTP API); `field` prefixes error paths. */
export function parseRoute(input: unknown, field = 'route'): Route {
  const parsed = routeSchema.safeParse(input);
  if (!parsed.success) throw schemaError(parsed.error, ErrorCode.InvalidRouteTable, field);
  const route = normalizeRoute(parsed.data);
  checkTableInvariants({ version: 0, routes: [route] });
  return route;
}

/** Parses route-file text; JSON syntax errors are reported like schema errors. */
export function parseRouteTableJson(text: string): RouteTable {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new SfError(ErrorCode.InvalidRouteTable, `route file is not valid JSON: ${(err as Error).message}`, 'file');
  }
  return parseRouteTable(raw);
}

/** The effective limits of a route, its own values over the defaults. */
export function routeLimits(route: Route): {
  maxConnections: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  drainTimeoutMs: number;
} {
  return {
    maxConnections: route.maxConnections ?? DEFAULT_ROUTE_LIMITS.maxConnections,
    connectTimeoutMs: route.connectTimeoutMs ?? DEFAULT_ROUTE_LIMITS.connectTimeoutMs,
    idleTimeoutMs: route.idleTimeoutMs ?? DEFAULT_ROUTE_LIMITS.idleTimeoutMs,
    drainTimeoutMs: route.drainTimeoutMs ?? DEFAULT_ROUTE_LIMITS.drainTimeoutMs,
  };
}

/** True when a backend may receive new connections. */
export function isEligible(b: Backend): boolean {
  return b.state === 'active';
}
