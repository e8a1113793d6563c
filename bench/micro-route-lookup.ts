/**
 * Question: what does finding the route for a connection on a shared SNI port cost as the
 * number of services on the port grows? Plain route ports need no lookup (one listener per
 * port); a shared TLS port matches the ClientHello's server name against each route's `sni`
 * patterns. This replays that scan (RouteListener.bindingFor, which is private: first route
 * whose pattern `hostMatches`, else the port's default) over tables of 1 to 1,000 routes.
 *
 *   node dist/bench/micro-route-lookup.js [--quick]
 */
import { hostMatches } from '../router/sni';
import { runMicro, type MicroCase } from './lib/micro';

interface SniRoute {
  id: number;
  sni: string[];
}

function table(n: number): SniRoute[] {
  return Array.from({ length: n }, (_, i) => ({
    id: i,
    sni: [`redis-${i}.services.example.com`, `*.tenant-${i}.example.com`],
  }));
}

function lookup(routes: readonly SniRoute[], serverName: string): SniRoute | undefined {
  for (const r of routes) if (r.sni.some((n) => hostMatches(n, serverName))) return r;
  return undefined;
}

const cases: MicroCase[] = [];
for (const n of [1, 10, 100, 1000]) {
  const routes = table(n);
  const last = n - 1;
  cases.push({ name: `${n} routes, exact, last`, fn: () => lookup(routes, `redis-${last}.services.example.com`) });
  cases.push({ name: `${n} routes, wildcard, last`, fn: () => lookup(routes, `db.tenant-${last}.example.com`) });
  cases.push({ name: `${n} routes, no match`, fn: () => lookup(routes, 'unknown.example.org') });
}

void runMicro('route-lookup', 'SNI route lookup: linear hostMatches scan, cost per TLS connection', cases);
