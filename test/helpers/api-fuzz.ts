/**
 * fast-check generators of control API requests (JSON bodies near and far from valid, URL paths
 * with broken percent-encodings) and a checker of the answers, shared by
 * test/integration/control-api-fuzz.test.ts (a few thousand cases) and bench/fuzz-control-api.ts
 * (100,000). The property: control answers every request in time, never with a 500, and every
 * error is the registry's JSON body.
 */
import fc from 'fast-check';
import { isErrorCode } from '../../common/errors';
import type { EndpointInfo } from '../../control/api/http-server';
import { rawRequest } from './raw-http';

/** Every field name the API's bodies know, so generated objects reach deep into validation. */
const FIELDS = [
  'router_group_guid',
  'port',
  'backend_ip',
  'backend_port',
  'ttl',
  'modification_tag',
  'guid',
  'index',
  'backend_id',
  'role',
  'weight',
  'epoch',
  'state',
  'mode',
  'sni',
  'proxyProtocol',
  'tls',
  'maxConnections',
  'connectTimeoutMs',
  'idleTimeoutMs',
  'drainTimeoutMs',
  'name',
  'type',
  'reservable_ports',
  'scopes',
  'engine',
  'replicas',
  'durability',
  'volume',
  'sizeMb',
  'size_mb',
  'fencing',
  'policy',
  'to',
  'command',
  'version',
  '__proto__',
  'constructor',
];

const nastyString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.constantFrom(
    '',
    ' ',
    'a b',
    '\u0000',
    '127.0.0.1',
    '::1',
    '16000-16999',
    '0-65535',
    'read',
    'admin',
    'tcp',
    'redis',
    'postgres',
    'primary',
    'fenced',
    'default',
    '%E0%A4%A',
    '../../etc/passwd',
    'x'.repeat(5000),
    '\ud800',
    '1e400',
  ),
);

const scalar = fc.oneof(
  nastyString,
  fc.integer(),
  fc.integer({ min: 0, max: 70_000 }),
  fc.double(),
  fc.constantFrom(0, -1, 1, 65535, 65536, 16379, 2 ** 53, Number.MAX_SAFE_INTEGER + 2, 1e308),
  fc.boolean(),
  fc.constant(null),
);

/** Objects made of the API's field names with values of any shape, nested a few levels. */
const { value: apiValue } = fc.letrec<{ value: unknown; object: Record<string, unknown> }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    scalar,
    tie('object'),
    fc.array(tie('value'), { maxLength: 4 }),
  ),
  object: fc.dictionary(fc.oneof(fc.constantFrom(...FIELDS), fc.string({ maxLength: 10 })), tie('value'), {
    maxKeys: 8,
  }),
}));

/** A JSON body: near-valid shapes (objects and arrays of them) or any JSON value at all. */
export const jsonBodyArbitrary: fc.Arbitrary<unknown> = fc.oneof(
  apiValue,
  fc.array(apiValue, { maxLength: 5 }),
  fc.jsonValue({ maxDepth: 4 }),
);

/** Raw bytes that are rarely JSON: cut-off documents, invalid UTF-8, deep nesting. */
export const rawBodyArbitrary: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
  fc.tuple(jsonBodyArbitrary, fc.nat()).map(([v, n]) => {
    const text = JSON.stringify(v) ?? 'null';
    return Buffer.from(text.slice(0, n % (text.length + 1)));
  }),
  fc.integer({ min: 1, max: 20_000 }).map((n) => Buffer.from('['.repeat(n))),
);

const pathSegment = fc.oneof(
  fc.string({ maxLength: 12 }).map((s) => encodeURIComponent(s)),
  fc.string({ unit: 'grapheme', maxLength: 8 }).map((s) => encodeURIComponent(s)),
  fc.constantFrom('%', '%E0%A4%A', '%zz', '%00', '%C0%80', '%ED%A0%80', '%FF', '..', '.', '', '%2F', 'a%0Ab', ':name'),
  fc.stringMatching(/^[A-Za-z0-9._~-]{1,20}$/),
  fc.integer({ min: 250, max: 3000 }).map((n) => 'x'.repeat(n)),
);

/** A request target: a registered pattern with its params (or a segment) replaced, or any path. */
export function pathArbitrary(endpoints: readonly EndpointInfo[]): fc.Arbitrary<string> {
  const fromPattern = fc
    .tuple(fc.constantFrom(...endpoints.map((e) => e.pattern)), fc.array(pathSegment, { minLength: 4, maxLength: 4 }))
    .map(([pattern, segs]) => {
      let i = 0;
      return pattern.replace(/:[A-Za-z_]+/g, () => segs[i++ % segs.length]);
    });
  const anyPath = fc.array(pathSegment, { maxLength: 6 }).map((segs) => `/${segs.join('/')}`);
  const query = fc.oneof(
    fc.constant(''),
    fc.constantFrom('?name=default', '?access_token=x', '?limit=-1', '?router_group_guid=%', '?%=%&&=='),
    fc.string({ maxLength: 20 }).map((s) => `?${s.replace(/[\s#]/g, '')}`),
  );
  return fc.tuple(fc.oneof(fromPattern, anyPath), query).map(([p, q]) => p + q);
}

export const methodArbitrary = fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS');

export interface FuzzOutcome {
  status: number;
  code: string | null;
  /** Why the answer breaks the property; null when it holds. */
  problem: string | null;
}

/**
 * Sends one request and judges the answer: one within `timeoutMs`, not a 500, and for every error
 * a JSON body whose code is in the registry. 2xx answers are allowed (a generated body can be valid).
 */
export async function sendAndJudge(
  port: number,
  method: string,
  target: string,
  token: string | null,
  body?: Buffer | string,
  timeoutMs = 5000,
): Promise<FuzzOutcome> {
  const headers: Array<[string, string]> = [];
  if (token) headers.push(['Authorization', `Bearer ${token}`]);
  if (body !== undefined) headers.push(['Content-Type', 'application/json']);
  const res = await rawRequest(port, { method, target, headers, body, timeoutMs }, true);
  if (!res) return { status: 0, code: null, problem: 'no answer (connection closed or timed out)' };
  if (res.status < 400) return { status: res.status, code: null, problem: null };
  let code: unknown;
  try {
    code = (JSON.parse(res.body) as { error?: { code?: unknown } }).error?.code;
  } catch {
    return { status: res.status, code: null, problem: `non-JSON error body: ${res.body.slice(0, 120)}` };
  }
  if (!isErrorCode(code))
    return { status: res.status, code: String(code), problem: `unregistered code ${String(code)}` };
  if (res.status === 500) return { status: 500, code, problem: 'HTTP 500' };
  return { status: res.status, code, problem: null };
}
