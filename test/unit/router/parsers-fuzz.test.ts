/**
 * Property-based fuzzing of every parser the router runs on input it does not control:
 * route files and tables, route deltas, the ClientHello peek, and the PROXY header encoder with
 * the addresses it is given. Each property: no exception but an SfError with a registry code,
 * and whatever is accepted is well-formed. bench/fuzz-parsers.ts runs the same generators at
 * 100,000 cases per parser.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import {
  hostSyntaxProblem,
  parseRouteTable,
  parseRouteTableJson,
  type RouteTable,
} from '../../../protocol/route-model';
import { parseRouteDelta } from '../../../router/route-source-redis';
import { proxyHeaderV1, proxyHeaderV2, type ProxyAddresses } from '../../../router/proxy-protocol';
import { MAX_CLIENT_HELLO_BYTES, hostMatches, parseClientHelloSni } from '../../../router/sni';
import {
  buildClientHello,
  clientHelloParts,
  firstBytes,
  isRegistryError,
  proxyAddresses,
  routeDeltaText,
  routeFileText,
  tableInput,
  validTableInput,
} from '../../helpers/parser-arbitraries';

const RUNS = 2000;

/** Calls `parse`; returns its value, or undefined after checking that what it threw is allowed. */
function parsedOrRefused<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch (err) {
    if (!isRegistryError(err))
      throw new Error(`threw something other than a registry SfError: ${String(err)}`, { cause: err });
    return undefined;
  }
}

function expectWellFormed(table: RouteTable): void {
  for (const route of table.routes) {
    expect(route.port).to.be.within(1, 65535);
    const ids = new Set<string>();
    for (const b of route.backends) {
      expect(hostSyntaxProblem(b.host), b.host).to.equal(undefined);
      expect(b.port).to.be.within(1, 65535);
      expect(ids.has(b.id)).to.equal(false);
      ids.add(b.id);
    }
  }
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** Reads a v2 header back (proxy-protocol.txt section 2.2): family, address bytes, ports. */
function decodeV2(buf: Buffer): { command: number; family: number; src: number[]; dst: number[]; ports: number[] } {
  expect(buf.subarray(0, 12).equals(V2_SIGNATURE)).to.equal(true);
  const length = buf.readUInt16BE(14);
  expect(buf.length).to.equal(16 + length);
  const family = buf[13]!;
  const size = family === 0x11 ? 4 : family === 0x21 ? 16 : 0;
  return {
    command: buf[12]!,
    family,
    src: [...buf.subarray(16, 16 + size)],
    dst: [...buf.subarray(16 + size, 16 + 2 * size)],
    ports: size === 0 ? [] : [buf.readUInt16BE(16 + 2 * size), buf.readUInt16BE(18 + 2 * size)],
  };
}

function bytesOf(address: string): number[] {
  const bare = address.split('%')[0]!;
  return ipaddr.process(bare).toByteArray();
}

describe('router parsers under fuzzing', function () {
  this.timeout(120_000);

  describe('route file (parseRouteTableJson)', () => {
    it('accepts only well-formed tables and refuses the rest with a registry error', () => {
      fc.assert(
        fc.property(routeFileText, (text) => {
          const table = parsedOrRefused(() => parseRouteTableJson(text));
          if (table) expectWellFormed(table);
        }),
        { numRuns: RUNS },
      );
    });

    it('accepts every valid table, with the defaults filled in', () => {
      fc.assert(
        fc.property(validTableInput, (input) => {
          const table = parseRouteTableJson(JSON.stringify(input));
          expect(table.routes.map((r) => r.port)).to.deep.equal(input.routes.map((r) => r.port));
          for (const r of table.routes)
            for (const b of r.backends) expect(b).to.include.keys('id', 'role', 'epoch', 'state');
        }),
        { numRuns: RUNS },
      );
    });

    it('treats parsed JSON values (pushed snapshots, cache files) the same way', () => {
      fc.assert(
        fc.property(tableInput, (input) => {
          const table = parsedOrRefused(() => parseRouteTable(input));
          if (table) expectWellFormed(table);
        }),
        { numRuns: RUNS },
      );
    });
  });

  describe('route delta (parseRouteDelta)', () => {
    it('accepts only whole, well-formed deltas', () => {
      fc.assert(
        fc.property(routeDeltaText, (text) => {
          const delta = parsedOrRefused(() => parseRouteDelta(text));
          if (!delta) return;
          expect(Number.isSafeInteger(delta.version) && delta.version >= 0).to.equal(true);
          for (const p of delta.deletes) expect(p).to.be.within(1, 65535);
          expectWellFormed({ version: delta.version, routes: delta.upserts });
        }),
        { numRuns: RUNS },
      );
    });
  });

  describe('PROXY headers', () => {
    it('encodes any addresses without throwing, in the shapes the spec allows', () => {
      fc.assert(
        fc.property(proxyAddresses, (a: ProxyAddresses) => {
          const v1 = proxyHeaderV1(a).toString('latin1');
          // proxy-protocol.txt 2.1: at most 107 bytes, one line.
          expect(v1.length).to.be.at.most(107);
          expect(v1).to.match(/^PROXY (UNKNOWN|TCP4 \S+ \S+ \d+ \d+|TCP6 \S+ \S+ \d+ \d+)\r\n$/);
          const v2 = decodeV2(proxyHeaderV2(a));
          expect([0x20, 0x21]).to.include(v2.command);
        }),
        { numRuns: RUNS },
      );
    });

    it('carries valid addresses and ports exactly, in both versions', () => {
      const sameFamily = fc.oneof(
        fc.tuple(fc.ipV4(), fc.ipV4()),
        fc.tuple(fc.ipV6(), fc.ipV6()),
        fc.tuple(
          fc.ipV4().map((a) => `::ffff:${a}`),
          fc.ipV4(),
        ),
      );
      const port = fc.integer({ min: 0, max: 65535 });
      fc.assert(
        fc.property(sameFamily, port, port, ([src, dst], sp, dp) => {
          const a = { sourceAddress: src, sourcePort: sp, destinationAddress: dst, destinationPort: dp };
          const v2 = decodeV2(proxyHeaderV2(a));
          expect(v2.command).to.equal(0x21);
          expect(v2.src).to.deep.equal(
            bytesOf(src).length === v2.src.length ? bytesOf(src) : ipaddr.parse(src).toByteArray(),
          );
          expect(v2.dst).to.deep.equal(
            bytesOf(dst).length === v2.dst.length ? bytesOf(dst) : ipaddr.parse(dst).toByteArray(),
          );
          expect(v2.ports).to.deep.equal([sp, dp]);
          const [, family, s, d, spText, dpText] = proxyHeaderV1(a).toString('latin1').trimEnd().split(' ');
          expect(family).to.equal(v2.family === 0x11 ? 'TCP4' : 'TCP6');
          expect(ipaddr.parse(s!).toByteArray()).to.deep.equal(v2.src);
          expect(ipaddr.parse(d!).toByteArray()).to.deep.equal(v2.dst);
          expect([Number(spText), Number(dpText)]).to.deep.equal([sp, dp]);
        }),
        { numRuns: RUNS },
      );
    });
  });

  describe('ClientHello SNI peek (parseClientHelloSni)', () => {
    it('reads the server name of any well-formed ClientHello, wherever the extension sits', () => {
      fc.assert(
        fc.property(clientHelloParts, (parts) => {
          const result = parseClientHelloSni(buildClientHello(parts));
          expect(result).to.deep.equal({ kind: 'done', serverName: parts.serverName?.toLowerCase() });
        }),
        { numRuns: RUNS },
      );
    });

    it('asks for more bytes for every prefix of a ClientHello', () => {
      fc.assert(
        fc.property(clientHelloParts, fc.nat(), (parts, cut) => {
          const hello = buildClientHello(parts);
          expect(parseClientHelloSni(hello.subarray(0, cut % hello.length)).kind).to.equal('need-more');
        }),
        { numRuns: RUNS },
      );
    });

    it('never throws on damaged or random first bytes, and never waits beyond one record', () => {
      fc.assert(
        fc.property(firstBytes, (bytes) => {
          const result = parseClientHelloSni(bytes);
          expect(['need-more', 'not-tls', 'done']).to.include(result.kind);
          if (result.kind === 'need-more') expect(bytes.length).to.be.lessThan(MAX_CLIENT_HELLO_BYTES);
          if (result.kind === 'done' && result.serverName !== undefined) {
            expect(result.serverName.length).to.be.at.most(bytes.length);
            // Whatever name was read, matching it against routes cannot throw either.
            hostMatches('*.example.com', result.serverName);
          }
        }),
        { numRuns: RUNS },
      );
    });
  });
});
