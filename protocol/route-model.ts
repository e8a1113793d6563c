/**
 * The route model: the one contract shared by the router, the control plane and route files.
 * Types are derived from the schema so validation and typing can never drift apart.
 */
import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { ErrorCode, SfError, schemaError } from '../common';

/** Defaults for per-route limits; a route may override each. */
export const DEFAULT_ROUTE_LIMITS = {
  /**
   * No cap of a route's own: a route is bounded by the router's global connection limit (derived
   * from its descriptor limit) less what is reserved for every other route, so one route's idle
   * clients can never take the last descriptors from the others. A route may still
   * set a lower cap.
   * @default Infinity
   */
  maxConnections: Number.POSITIVE_INFINITY,
  /** @default 5000 ms to establish the backend connection before trying another backend */
  connectTimeoutMs: 5_000,
  /** @default 0 (disabled): database pools keep idle connections for hours; keepalive finds dead peers */
  idleTimeoutMs: 0,
  /** @default 30000 ms a removed or draining backend's connections may live on */
  drainTimeoutMs: 30_000,
} as const;

export { DEFAULT_ROUTER_GROUP } from './route-defaults';
import { DEFAULT_ROUTER_GROUP } from './route-defaults';

/** RFC 1123 section 2.1: letters, digits and inner hyphens, 1-63 characters per label. */
const HOST_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
/** Spaces, ASCII control characters (NUL included) and DEL. */
// eslint-disable-next-line no-control-regex -- control characters are exactly what is refused here
const SPACE_OR_CONTROL = /[\s\x00-\x1f\x7f]/;

/**
 * Why `host` is not a usable backend host, or undefined when it is one: an IPv4 address in
 * dotted-decimal form, an IPv6 address (without brackets), or a host name per RFC 1123.
 * getaddrinfo(3) also reads `127.1`, `0x7f000001` or `2130706433` as addresses, so such forms
 * (and names whose last label is all digits, RFC 3696 section 2) are refused: they would hide an
 * address from anyone reading the table, the router's self-loop check included.
 */
export function hostSyntaxProblem(host: string): string | undefined {
  if (host.length === 0) return 'must be a non-empty host name or IP address';
  if (SPACE_OR_CONTROL.test(host)) return 'must not contain spaces or control characters';
  if (host.length > 253) return 'must be at most 253 characters';
  if (ipaddr.IPv4.isValidFourPartDecimal(host) || ipaddr.IPv6.isValid(host)) return undefined;
  if (host.startsWith('[')) return 'must be an IPv6 address without brackets';
  if (ipaddr.IPv4.isValid(host)) return 'must be an IPv4 address in dotted-decimal form (a.b.c.d)';
  const labels = (host.endsWith('.') ? host.slice(0, -1) : host).split('.');
  if (!labels.every((l) => HOST_LABEL.test(l))) return 'must be a host name (RFC 1123) or an IP address';
  if (/^\d+$/.test(labels[labels.length - 1]!))
    return 'must not end in an all-numeric label unless it is an IP address';
  return undefined;
}

const hostSchema = z.string({ error: 'must be a host name or IP address' }).superRefine((host, ctx) => {
  const problem = hostSyntaxProblem(host);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

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
    /**
     * The backend speaks TLS: the router connects to it over TLS (PostgreSQL routes first send an
     * SSLRequest) and verifies its certificate against the route's `tls.backendCaFile`.
     */
    tls: z.boolean({ error: 'must be a boolean' }).optional(),
  })
  .strict();

const filePathSchema = z
  .string({ error: 'must be an absolute file path' })
  .max(4096, 'must be at most 4096 characters')
  .regex(/^\/[^\0]*$/, 'must be an absolute file path');

/** TLS versions a terminating route may accept at least. */
export const TLS_MIN_VERSIONS = ['TLSv1.2', 'TLSv1.3'] as const;

/**
 * TLS between clients and the router (and optionally on to the backend). Certificates are named
 * by file path on the router's host, never carried inline: a private key must not travel through
 * the API, the state store or route pushes. The router re-reads the files when they change, so a
 * renewed certificate serves new connections while established ones keep theirs.
 */
export const routeTlsSchema = z
  .object({
    /** `terminate`: the router runs the TLS handshake; `passthrough`: the backend does, the router only checks that the client starts TLS. */
    mode: z.enum(['terminate', 'passthrough'], { error: "must be 'terminate' or 'passthrough'" }).default('terminate'),
    /** How a client asks for TLS: at once with a ClientHello (`tls`), or first with PostgreSQL's SSLRequest (`postgres`). */
    startup: z.enum(['tls', 'postgres'], { error: "must be 'tls' or 'postgres'" }).default('tls'),
    /** `required`: a client that does not start TLS is refused; `optional`: it is relayed in plaintext. */
    policy: z.enum(['required', 'optional'], { error: "must be 'required' or 'optional'" }).default('required'),
    certFile: filePathSchema.optional(),
    keyFile: filePathSchema.optional(),
    /** Clients must present a certificate signed by one of these CAs (mTLS). */
    clientCaFile: filePathSchema.optional(),
    minVersion: z.enum(TLS_MIN_VERSIONS, { error: "must be 'TLSv1.2' or 'TLSv1.3'" }).default('TLSv1.2'),
    /** ALPN protocols offered, in order of preference (RFC 7301). */
    alpn: z
      .array(z.string().min(1, 'must be 1-255 characters').max(255, 'must be 1-255 characters'))
      .min(1, 'must list at least one protocol')
      .max(16, 'must list at most 16 protocols')
      .optional(),
    /** Also connect to the backend over TLS (as `tls: true` does). */
    backend: z.boolean().optional(),
    /**
     * The CA that backends' certificates must chain to when the router connects to them over
     * TLS (the platform CA); without it the system's CAs. A backend that fails verification is
     * refused, never reached in plaintext.
     */
    backendCaFile: filePathSchema.optional(),
    /**
     * The name backends' certificates must carry, sent as SNI, instead of the address connected
     * to: a PostgreSQL service's engines present the service's certificate (so SCRAM channel
     * binding holds through the router), which names the service, not the cells.
     */
    backendServerName: z
      .string({ error: 'must be a host name' })
      .regex(/^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/, 'must be a host name')
      .optional(),
    /**
     * mTLS to backends: the certificate (and its key) the router presents when it connects to a
     * backend over TLS, for backends that ask clients for one (Redis `tls-auth-clients yes`,
     * PostgreSQL `clientcert=verify-ca`). Files on the router's host, re-read when they change.
     */
    backendCertFile: filePathSchema.optional(),
    backendKeyFile: filePathSchema.optional(),
  })
  .strict()
  .superRefine((tls, ctx) => {
    if ((tls.backendCertFile === undefined) !== (tls.backendKeyFile === undefined))
      ctx.addIssue({
        code: 'custom',
        path: [tls.backendCertFile === undefined ? 'backendCertFile' : 'backendKeyFile'],
        message:
          tls.backendCertFile === undefined ? 'is required with backendKeyFile' : 'is required with backendCertFile',
      });
    if (tls.mode === 'terminate') {
      for (const f of ['certFile', 'keyFile'] as const)
        if (!tls[f]) ctx.addIssue({ code: 'custom', path: [f], message: "is required when mode is 'terminate'" });
    } else {
      for (const f of [
        'certFile',
        'keyFile',
        'clientCaFile',
        'alpn',
        'backend',
        'backendCaFile',
        'backendServerName',
        'backendCertFile',
        'backendKeyFile',
      ] as const)
        if (tls[f] !== undefined)
          ctx.addIssue({ code: 'custom', path: [f], message: "applies only when mode is 'terminate'" });
    }
  });

export type RouteTls = z.output<typeof routeTlsSchema>;

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
    /** `true`: TLS towards the backend only; an object: TLS with clients (routeTlsSchema). */
    tls: z
      .union([z.boolean(), z.record(z.string(), z.unknown())], { error: 'must be a boolean or a TLS settings object' })
      .transform((value, ctx): boolean | RouteTls => {
        // Parsed here rather than as a union member, so an error names the field inside
        // (routes[0].tls.minVersion), not just the union.
        if (typeof value === 'boolean') return value;
        const parsed = routeTlsSchema.safeParse(value);
        if (parsed.success) return parsed.data;
        for (const issue of parsed.error.issues) ctx.addIssue({ ...issue } as Parameters<typeof ctx.addIssue>[0]);
        return z.NEVER;
      })
      .optional(),
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
  /** The router reaches this backend over TLS (absent: as the route says). */
  tls?: boolean;
}

/** What a route sets besides its port, group and backends. */
export interface RouteSettings {
  mode: RouteMode;
  sni?: string[];
  proxyProtocol?: 1 | 2;
  tls?: boolean | RouteTls;
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
    // A shared port is routed by the ClientHello's name without terminating TLS; a route with
    // TLS settings of its own needs its port to itself.
    if (names.length > 0 && typeof route.tls === 'object') {
      throw new SfError(
        ErrorCode.InvalidRouteTable,
        `routes[${i}].tls settings cannot be combined with sni (a port shared by server name is never terminated)`,
        `routes[${i}].tls`,
      );
    }
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

/** True when the router connects to the route's backends over TLS. */
export function backendTls(route: Route): boolean {
  return route.tls === true || (typeof route.tls === 'object' && route.tls.backend === true);
}

/** True when the router connects to this backend of the route over TLS. */
export function backendUsesTls(route: Route, backend: Backend): boolean {
  return backend.tls === true || backendTls(route);
}

/** True when the router reaches any backend of the route over TLS. */
export function anyBackendTls(route: Route): boolean {
  return backendTls(route) || route.backends.some((b) => b.tls === true);
}

/** The route's TLS with clients, or undefined for a plain route (or one with backend TLS only). */
export function clientTls(route: Route): RouteTls | undefined {
  return typeof route.tls === 'object' ? route.tls : undefined;
}

/** True when a backend may receive new connections. */
export function isEligible(b: Backend): boolean {
  return b.state === 'active';
}
