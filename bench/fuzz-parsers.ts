/**
 * Question: do the router's parsers hold on 100,000 generated inputs each: no exception other
 * than an SfError with a registry code, nothing accepted that is malformed, and no input that
 * takes long (a hang, or a pathological slow path)? The generators are the property tests' own
 * (test/helpers/parser-arbitraries.ts); the unit tests run a few thousand cases, this runs many.
 *
 *   node dist/bench/fuzz-parsers.js [--cases N] [--seed S] [--only NAME]
 *
 * Prints a table and writes bench/results/fuzz-parsers.json. A failure prints the shrunk
 * counterexample and the seed that replays it, and the run exits 1.
 */
import { performance } from 'node:perf_hooks';
import fc from 'fast-check';
import { hostSyntaxProblem, parseRouteTable, parseRouteTableJson, type RouteTable } from '../protocol';
import { parseRouteDelta } from '../router/route-source-redis';
import { proxyHeaderV1, proxyHeaderV2 } from '../router/proxy-protocol';
import { MAX_CLIENT_HELLO_BYTES, parseClientHelloSni } from '../router/sni';
import {
  firstBytes,
  hostish,
  isRegistryError,
  proxyAddresses,
  routeDeltaText,
  routeFileText,
  tableInput,
} from '../test/helpers/parser-arbitraries';
import { formatNumber, formatTable, writeResults } from './lib/report';

/** A case slower than this is reported: every parser here is linear in input of a few KB. */
const SLOW_CASE_MS = 50;

type Outcome = 'accepted' | 'refused';

interface Target {
  name: string;
  arbitrary: fc.Arbitrary<unknown>;
  /** Parses one input; throws (with a reason) when the outcome breaks the parser's contract. */
  run(input: unknown): Outcome;
}

function refusedOr<T>(parse: () => T, check: (value: T) => void): Outcome {
  let value: T;
  try {
    value = parse();
  } catch (err) {
    if (isRegistryError(err)) return 'refused';
    throw new Error(`threw ${String(err)}`, { cause: err });
  }
  check(value);
  return 'accepted';
}

function wellFormed(table: RouteTable): void {
  for (const r of table.routes) {
    if (!(r.port >= 1 && r.port <= 65535)) throw new Error(`accepted port ${r.port}`);
    const ids = new Set<string>();
    for (const b of r.backends) {
      const problem = hostSyntaxProblem(b.host);
      if (problem) throw new Error(`accepted host ${JSON.stringify(b.host)}: ${problem}`);
      if (!(b.port >= 1 && b.port <= 65535)) throw new Error(`accepted backend port ${b.port}`);
      if (ids.has(b.id)) throw new Error(`accepted duplicate backend id ${b.id}`);
      ids.add(b.id);
    }
  }
}

// eslint-disable-next-line no-control-regex -- control characters are what an accepted host must not hold
const SPACE_OR_CONTROL = /[\s\x00-\x1f\x7f]/;
const V1_SHAPE = /^PROXY (UNKNOWN|TCP4 \S+ \S+ \d+ \d+|TCP6 \S+ \S+ \d+ \d+)\r\n$/;
const V2_SIGNATURE = '0d0a0d0a000d0a515549540a';

const targets: Target[] = [
  {
    name: 'route file text',
    arbitrary: routeFileText,
    run: (text) => refusedOr(() => parseRouteTableJson(text as string), wellFormed),
  },
  {
    name: 'route table value',
    arbitrary: tableInput,
    run: (value) => refusedOr(() => parseRouteTable(value), wellFormed),
  },
  {
    name: 'route delta',
    arbitrary: routeDeltaText,
    run: (text) =>
      refusedOr(
        () => parseRouteDelta(text as string),
        (d) => {
          if (d.deletes.some((p) => !(p >= 1 && p <= 65535))) throw new Error('accepted a bad delete');
          wellFormed({ version: d.version, routes: d.upserts });
        },
      ),
  },
  {
    name: 'backend host syntax',
    arbitrary: hostish,
    run: (host) => {
      if (typeof host !== 'string' || hostSyntaxProblem(host) !== undefined) return 'refused';
      if (SPACE_OR_CONTROL.test(host)) fail(`accepted ${JSON.stringify(host)}`);
      return 'accepted';
    },
  },
  {
    name: 'PROXY v1 header',
    arbitrary: proxyAddresses,
    run: (a) => {
      const line = proxyHeaderV1(a as Parameters<typeof proxyHeaderV1>[0]).toString('latin1');
      if (line.length > 107 || !V1_SHAPE.test(line)) fail(`bad v1 header ${JSON.stringify(line)}`);
      return line.startsWith('PROXY UNKNOWN') ? 'refused' : 'accepted';
    },
  },
  {
    name: 'PROXY v2 header',
    arbitrary: proxyAddresses,
    run: (a) => {
      const buf = proxyHeaderV2(a as Parameters<typeof proxyHeaderV2>[0]);
      if (buf.subarray(0, 12).toString('hex') !== V2_SIGNATURE || buf.length !== 16 + buf.readUInt16BE(14))
        fail(`bad v2 header ${buf.toString('hex')}`);
      return buf[12] === 0x21 ? 'accepted' : 'refused';
    },
  },
  {
    name: 'ClientHello SNI peek',
    arbitrary: firstBytes,
    run: (bytes) => {
      const b = bytes as Buffer;
      const r = parseClientHelloSni(b);
      if (r.kind === 'need-more' && b.length >= MAX_CLIENT_HELLO_BYTES) fail('waits beyond one record');
      return r.kind === 'done' ? 'accepted' : 'refused';
    },
  },
];

function fail(message: string): never {
  throw new Error(message);
}

interface Row {
  name: string;
  cases: number;
  accepted: number;
  refused: number;
  failed: boolean;
  meanUs: number;
  maxMs: number;
  slowCases: number;
  wallSeconds: number;
  counterexample?: string;
  seed: number;
}

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function main(): void {
  const cases = Number(flag('--cases') ?? 100_000);
  const seed = Number(flag('--seed') ?? Date.now() % 2 ** 31);
  const only = flag('--only');
  const rows: Row[] = [];
  for (const target of targets) {
    if (only && !target.name.includes(only)) continue;
    const counts = { accepted: 0, refused: 0 };
    let totalMs = 0;
    let maxMs = 0;
    let slowCases = 0;
    const t0 = performance.now();
    const details = fc.check(
      fc.property(target.arbitrary, (input) => {
        const s = performance.now();
        const outcome = target.run(input);
        const ms = performance.now() - s;
        totalMs += ms;
        if (ms > maxMs) maxMs = ms;
        if (ms > SLOW_CASE_MS) slowCases++;
        counts[outcome]++;
      }),
      { numRuns: cases, seed },
    );
    const wallSeconds = (performance.now() - t0) / 1000;
    const ran = counts.accepted + counts.refused;
    rows.push({
      name: target.name,
      cases: details.numRuns,
      ...counts,
      failed: details.failed,
      meanUs: (totalMs / Math.max(1, ran)) * 1000,
      maxMs,
      slowCases,
      wallSeconds,
      seed,
      ...(details.failed
        ? {
            counterexample: `${fc.stringify(details.counterexample)}: ${String((details.errorInstance as Error | undefined)?.message ?? details.errorInstance)}`,
          }
        : {}),
    });
  }
  process.stdout.write(
    `${formatTable(
      ['parser', 'cases', 'accepted', 'refused', 'failures', 'mean µs', 'max ms', `> ${SLOW_CASE_MS} ms`, 'wall s'],
      rows.map((r) => [
        r.name,
        formatNumber(r.cases),
        formatNumber(r.accepted),
        formatNumber(r.refused),
        r.failed ? 'FAILED' : '0',
        formatNumber(r.meanUs),
        formatNumber(r.maxMs),
        String(r.slowCases),
        formatNumber(r.wallSeconds),
      ]),
    )}\n`,
  );
  for (const r of rows.filter((x) => x.failed)) {
    process.stdout.write(
      `\n${r.name} failed (replay with --seed ${r.seed} --only '${r.name}'):\n  ${r.counterexample}\n`,
    );
  }
  const path = writeResults('fuzz-parsers', { casesPerParser: cases, seed, rows });
  process.stdout.write(`\nseed ${seed}; results in ${path}\n`);
  if (rows.some((r) => r.failed)) process.exitCode = 1;
}

main();
