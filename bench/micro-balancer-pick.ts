/**
 * Question: what does picking a backend cost per new connection, per balancer mode and pool
 * size? It runs once per accepted client, so it bounds the new-connections-per-second row.
 *
 *   node dist/bench/micro-balancer-pick.js [--quick]
 */
import { createBalancer } from '../router/balancer-factory';
import type { BalancerContext } from '../router/balancer';
import { parseRoute, type RouteMode } from '../protocol/route-model';
import { runMicro, type MicroCase } from './lib/micro';

const NO_EXCLUDE: ReadonlySet<string> = new Set();

function route(mode: RouteMode, backends: number) {
  return parseRoute({
    port: 16379,
    mode,
    backends: Array.from({ length: backends }, (_, i) => ({
      host: '10.0.0.1',
      port: 6379 + i,
      role: mode === 'primary' && i > 0 ? 'replica' : 'primary',
      weight: 1 + (i % 3),
    })),
  });
}

/** Live counts that vary per backend, as least-conn sees them in a busy router. */
const context: BalancerContext = {
  active: (id) => id.length + (id.charCodeAt(id.length - 1) % 7),
};

const cases: MicroCase[] = [];
for (const size of [3, 16, 64]) {
  for (const mode of ['primary', 'round-robin', 'least-conn'] as const) {
    const balancer = createBalancer(route(mode, size), context);
    cases.push({ name: `${mode} x${size}`, fn: () => balancer.pick(NO_EXCLUDE) });
  }
}
// A retry after a failed connect excludes the backend already tried.
const retry = createBalancer(route('round-robin', 16), context);
const tried: ReadonlySet<string> = new Set(['10.0.0.1:6379']);
cases.push({ name: 'round-robin x16, 1 excluded', fn: () => retry.pick(tried) });

void runMicro('balancer-pick', 'Balancer pick: cost of choosing a backend for one new connection', cases);
