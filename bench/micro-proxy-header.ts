/**
 * Question: what does building a PROXY protocol header cost per connection (v1 text vs v2
 * binary, IPv4 vs IPv6 vs IPv4-mapped)? It is on the connect path of routes with
 * `proxyProtocol` set.
 *
 *   node dist/bench/micro-proxy-header.js [--quick]
 */
import { proxyHeader, type ProxyAddresses } from '../router/proxy-protocol';
import { runMicro, type MicroCase } from './lib/micro';

const V4: ProxyAddresses = {
  sourceAddress: '192.168.10.21',
  sourcePort: 51234,
  destinationAddress: '10.0.0.5',
  destinationPort: 16379,
};
const V6: ProxyAddresses = {
  sourceAddress: '2001:db8::21',
  sourcePort: 51234,
  destinationAddress: '2001:db8::5',
  destinationPort: 16379,
};
// What Node reports for IPv4 clients of a dual-stack listener.
const MAPPED: ProxyAddresses = {
  sourceAddress: '::ffff:192.168.10.21',
  sourcePort: 51234,
  destinationAddress: '::ffff:10.0.0.5',
  destinationPort: 16379,
};

const cases: MicroCase[] = [];
for (const version of [1, 2] as const) {
  for (const [label, addresses] of [
    ['ipv4', V4],
    ['ipv6', V6],
    ['ipv4-mapped', MAPPED],
  ] as const) {
    cases.push({ name: `v${version} ${label}`, fn: () => proxyHeader(version, addresses) });
  }
}

void runMicro('proxy-header', 'PROXY header build: cost per proxied connection', cases);
