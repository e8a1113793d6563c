/**
 * Question: what does it cost a router to take in a route change from control: parsing and
 * validating one published delta, and a whole table snapshot after a version gap (DESIGN: a
 * 10,000-route table applied in under 100 ms, of which validation is the first part)?
 *
 *   node dist/bench/micro-route-delta.js [--quick]
 */
import { parseRouteTable } from '../protocol/route-model';
import { parseRouteDelta } from '../router/route-source-redis';
import { runMicro, type MicroCase } from './lib/micro';

function rawRoute(i: number, backends: number): Record<string, unknown> {
  return {
    port: 16000 + (i % 1000),
    routerGroup: 'default',
    mode: 'primary',
    backends: Array.from({ length: backends }, (_, j) => ({
      id: `svc-${i}-${j}`,
      host: `10.0.${Math.floor(i / 250) % 250}.${(i % 250) + 1}`,
      port: 6379 + j,
      role: j === 0 ? 'primary' : 'replica',
      weight: 1,
      epoch: 7,
      state: 'active',
    })),
  };
}

/** A table of `n` routes with unique ports (the 16000-16999 range only holds 1000). */
function rawTable(n: number): Record<string, unknown> {
  return { version: 42, routes: Array.from({ length: n }, (_, i) => ({ ...rawRoute(i, 3), port: 10000 + i })) };
}

const fenceDelta = JSON.stringify({ version: 43, upserts: [rawRoute(1, 3)], deletes: [] });
const bulkDelta = JSON.stringify({
  version: 44,
  upserts: Array.from({ length: 100 }, (_, i) => rawRoute(i, 3)).map((r, i) => ({ ...r, port: 10000 + i })),
  deletes: [16001, 16002],
});
const table1k = JSON.stringify(rawTable(1000));
const table10k = JSON.stringify(rawTable(10_000));

const cases: MicroCase[] = [
  { name: 'delta, 1 route x3 backends', fn: () => parseRouteDelta(fenceDelta) },
  { name: 'delta, 100 routes', fn: () => parseRouteDelta(bulkDelta) },
  { name: 'snapshot, 1,000 routes', fn: () => parseRouteTable(JSON.parse(table1k)) },
  { name: 'snapshot, 10,000 routes', fn: () => parseRouteTable(JSON.parse(table10k)) },
];

void runMicro('route-delta', 'Route change intake: JSON parse + schema validation of a delta or snapshot', cases);
