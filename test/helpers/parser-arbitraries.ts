/**
 * fast-check generators for the router's parsers: route files and tables, route deltas, PROXY
 * header addresses, TLS ClientHellos. Shared by the property tests (a few thousand cases) and
 * bench/fuzz-parsers.ts (100,000 per parser). Each mixes valid input, near-valid input with one
 * field wrong, truncated or flipped text and bytes, and plain noise, since parsers break at the
 * edges of what they accept more often than on random bytes.
 */
import fc from 'fast-check';
import { isErrorCode, isSfError } from '../../common/errors';

/** True for what a parser may throw: an SfError whose code is in the registry. */
export function isRegistryError(err: unknown): boolean {
  return isSfError(err) && isErrorCode(err.code) && (err.field === undefined || typeof err.field === 'string');
}

const validPort = fc.integer({ min: 1, max: 65535 });

/** Mostly valid ports, then the values a port check must refuse. */
export const portish: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: validPort },
  { weight: 1, arbitrary: fc.integer({ min: -10, max: 70_000 }) },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.constantFrom<unknown>(null, '6379', true, [], {}, 1e300, -0) },
);

const wellFormedHost = fc.oneof(
  fc.ipV4(),
  fc.ipV6(),
  fc.domain(),
  fc.constantFrom('localhost', '127.0.0.1', '::1', '0.0.0.0', '::', '::ffff:127.0.0.1', 'db-1.internal'),
);

/** Hosts as they come: well-formed, non-canonical IPv4, and strings that were once wrongly accepted. */
export const hostish: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 5, arbitrary: wellFormedHost },
  { weight: 1, arbitrary: fc.ipV4Extended() },
  {
    weight: 1,
    arbitrary: fc.constantFrom<unknown>('', 'a b', 'a\u0000b', '[::1]', '127.1', 'x'.repeat(300), 'db_1', 7, null),
  },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
);

const smallJson = fc.jsonValue({ maxDepth: 2 });

/** Sometimes a value of the wrong type in place of a field's value. */
function orJunk<T>(a: fc.Arbitrary<T>): fc.Arbitrary<unknown> {
  return fc.oneof({ weight: 8, arbitrary: a as fc.Arbitrary<unknown> }, { weight: 1, arbitrary: smallJson });
}

export const backendInput: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    id: orJunk(fc.string({ maxLength: 12 })),
    host: hostish,
    port: portish,
    role: orJunk(fc.constantFrom('primary', 'replica')),
    weight: orJunk(fc.integer({ min: 0, max: 1000 })),
    epoch: orJunk(fc.nat()),
    state: orJunk(fc.constantFrom('active', 'draining', 'fenced')),
  },
  { requiredKeys: ['host', 'port'] },
);

export const routeInput: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    port: portish,
    routerGroup: orJunk(fc.constantFrom('default', 'tcp', '')),
    mode: orJunk(fc.constantFrom('primary', 'round-robin', 'least-conn', 'fastest')),
    backends: fc.array(backendInput, { maxLength: 4 }),
    sni: orJunk(
      fc.array(
        fc.oneof(
          fc.domain(),
          fc.domain().map((d) => `*.${d}`),
          fc.string(),
        ),
        { maxLength: 3 },
      ),
    ),
    proxyProtocol: orJunk(fc.constantFrom(1, 2, 3)),
    tls: orJunk(fc.boolean()),
    maxConnections: orJunk(fc.integer({ min: 0, max: 20_000_000 })),
    connectTimeoutMs: orJunk(fc.integer({ min: 0, max: 4_000_000 })),
    idleTimeoutMs: orJunk(fc.integer({ min: -1, max: 700_000_000 })),
    drainTimeoutMs: orJunk(fc.integer({ min: -1, max: 90_000_000 })),
    maxConnection: fc.nat(),
  },
  { requiredKeys: ['port', 'backends'] },
);

/** Tables every router must accept: distinct ports and ids, every value in range. */
export const validTableInput: fc.Arbitrary<{ version: number; routes: Array<Record<string, unknown>> }> = fc.record({
  version: fc.nat(),
  routes: fc.uniqueArray(
    fc.record(
      {
        port: validPort,
        mode: fc.constantFrom('primary', 'round-robin', 'least-conn'),
        backends: fc.uniqueArray(
          fc.record(
            {
              id: fc.string({ minLength: 1, maxLength: 12 }),
              host: wellFormedHost,
              port: validPort,
              role: fc.constantFrom('primary', 'replica'),
              weight: fc.integer({ min: 0, max: 1000 }),
              epoch: fc.nat(),
              state: fc.constantFrom('active', 'draining', 'fenced'),
            },
            { requiredKeys: ['id', 'host', 'port'] },
          ),
          { maxLength: 4, selector: (b) => b.id },
        ),
        proxyProtocol: fc.constantFrom(1, 2),
        tls: fc.boolean(),
        maxConnections: fc.integer({ min: 1, max: 10_000_000 }),
        connectTimeoutMs: fc.integer({ min: 1, max: 3_600_000 }),
        idleTimeoutMs: fc.integer({ min: 0, max: 604_800_000 }),
        drainTimeoutMs: fc.integer({ min: 0, max: 86_400_000 }),
      },
      { requiredKeys: ['port', 'backends'] },
    ),
    { maxLength: 5, selector: (r) => r.port },
  ),
});

export const tableInput: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: validTableInput },
  {
    weight: 8,
    arbitrary: fc.record(
      { version: orJunk(fc.nat()), routes: fc.array(routeInput, { maxLength: 4 }) },
      { requiredKeys: ['routes'] },
    ),
  },
  { weight: 1, arbitrary: fc.anything({ maxDepth: 3 }) },
);

/** Text cut short or with one character replaced: a file caught mid-write, a corrupted message. */
function damaged(text: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc
    .tuple(text, fc.nat(), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), fc.boolean())
    .map(([t, at, ch, cut]) => {
      const i = t.length === 0 ? 0 : at % t.length;
      return cut ? t.slice(0, i) : t.slice(0, i) + ch + t.slice(i + 1);
    });
}

function textOf(values: fc.Arbitrary<unknown>): fc.Arbitrary<string> {
  const json = values.map((v) => JSON.stringify(v) ?? 'null');
  return fc.oneof(
    { weight: 6, arbitrary: json },
    { weight: 2, arbitrary: damaged(json) },
    { weight: 1, arbitrary: fc.json({ maxDepth: 3 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 200 }) },
  );
}

/** Route file text. */
export const routeFileText: fc.Arbitrary<string> = textOf(tableInput);

/** Route delta messages as published on a router group's channel. */
export const routeDeltaText: fc.Arbitrary<string> = textOf(
  fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record(
        {
          version: orJunk(fc.nat()),
          upserts: fc.array(routeInput, { maxLength: 3 }),
          deletes: fc.array(portish, { maxLength: 3 }),
        },
        { requiredKeys: ['version', 'upserts', 'deletes'] },
      ),
    },
    { weight: 1, arbitrary: fc.anything({ maxDepth: 3 }) },
  ),
);

/** Addresses a socket may report, and strings no socket reports. */
export const addressish: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.ipV4() },
  { weight: 4, arbitrary: fc.ipV6() },
  { weight: 2, arbitrary: fc.ipV4().map((a) => `::ffff:${a}`) },
  { weight: 1, arbitrary: fc.constantFrom('fe80::1%eth0', 'fe80::1%25', '', '::', '0.0.0.0', '1.2.3', '::ffff:1.2.3') },
  { weight: 1, arbitrary: fc.ipV4Extended() },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 45 }) },
);

export const proxyPortish: fc.Arbitrary<number> = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 65535 }) },
  { weight: 1, arbitrary: fc.integer({ min: -5, max: 70_000 }) },
  { weight: 1, arbitrary: fc.double() },
);

export const proxyAddresses = fc.record({
  sourceAddress: addressish,
  sourcePort: proxyPortish,
  destinationAddress: addressish,
  destinationPort: proxyPortish,
});

export interface ClientHelloParts {
  serverName: string | undefined;
  /** Other names before the host name in the server_name list (unknown name types). */
  otherNames: Uint8Array[];
  sessionId: Uint8Array;
  cipherSuites: number;
  extensions: Array<{ type: number; data: Uint8Array }>;
  /** Where among the other extensions server_name goes. */
  sniAt: number;
}

function u16(n: number): number[] {
  return [(n >> 8) & 0xff, n & 0xff];
}

/** A TLS 1.2-style ClientHello record built from its parts (RFC 5246 7.4.1.2, RFC 6066 3). */
export function buildClientHello(p: ClientHelloParts): Buffer {
  const exts: number[][] = p.extensions.map((e) => [...u16(e.type), ...u16(e.data.length), ...e.data]);
  if (p.serverName !== undefined) {
    const name = [...Buffer.from(p.serverName, 'latin1')];
    const list: number[] = [];
    for (const other of p.otherNames) list.push(0x01, ...u16(other.length), ...other);
    list.push(0x00, ...u16(name.length), ...name);
    const data = [...u16(list.length), ...list];
    exts.splice(p.sniAt % (exts.length + 1), 0, [0x00, 0x00, ...u16(data.length), ...data]);
  }
  const extBytes = exts.flat();
  const body = [
    0x03,
    0x03,
    ...new Array<number>(32).fill(7),
    p.sessionId.length,
    ...p.sessionId,
    ...u16(p.cipherSuites * 2),
    ...new Array<number>(p.cipherSuites * 2).fill(0x13),
    0x01,
    0x00,
    ...u16(extBytes.length),
    ...extBytes,
  ];
  const handshake = [0x01, (body.length >> 16) & 0xff, ...u16(body.length & 0xffff), ...body];
  return Buffer.from([0x16, 0x03, 0x01, ...u16(handshake.length), ...handshake]);
}

export const clientHelloParts: fc.Arbitrary<ClientHelloParts> = fc.record({
  serverName: fc.option(fc.domain(), { nil: undefined }),
  otherNames: fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 2 }),
  sessionId: fc.uint8Array({ maxLength: 32 }),
  cipherSuites: fc.integer({ min: 1, max: 40 }),
  extensions: fc.array(
    fc.record({ type: fc.integer({ min: 1, max: 0xffff }), data: fc.uint8Array({ maxLength: 64 }) }),
    { maxLength: 6 },
  ),
  sniAt: fc.nat(),
});

/** Bytes a client may send first on a shared TLS port: hellos, damaged hellos, anything. */
export const firstBytes: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 3, arbitrary: clientHelloParts.map(buildClientHello) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        clientHelloParts.map(buildClientHello),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
      )
      .map(([hello, flips]) => {
        const out = Buffer.from(hello);
        for (const [at, value] of flips) out[at % out.length] = value;
        return out;
      }),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(clientHelloParts.map(buildClientHello), fc.nat()).map(([h, n]) => h.subarray(0, n % h.length)),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 300 }))
      .map(([len, rest]) => Buffer.from([0x16, 0x03, 0x01, ...u16(len), 0x01, ...rest])),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)) },
);
