/**
 * Question: what does reading the server name from a ClientHello cost per TLS connection on a
 * shared SNI port, and what does the early exit for non-TLS first bytes cost?
 *
 *   node dist/bench/micro-sni-parse.js [--quick]
 */
import { parseClientHelloSni } from '../router/sni';
import { captureClientHello } from './lib/client-hello';
import { runMicro } from './lib/micro';

async function main(): Promise<void> {
  const hello = await captureClientHello('redis-17.services.example.com');
  const check = parseClientHelloSni(hello);
  if (check.kind !== 'done' || check.serverName !== 'redis-17.services.example.com') {
    throw new Error(`captured ClientHello did not parse: ${JSON.stringify(check)}`);
  }
  // Clients whose ClientHello arrives in two segments hit the need-more path first.
  const firstHalf = hello.subarray(0, Math.floor(hello.length / 2));
  const redisPing = Buffer.from('PING\r\n');
  await runMicro('sni-parse', `SNI parse of a ${hello.length}-byte ClientHello from Node/OpenSSL`, [
    { name: `full ClientHello (${hello.length} B)`, fn: () => parseClientHelloSni(hello) },
    { name: 'first half (need-more)', fn: () => parseClientHelloSni(firstHalf) },
    { name: 'not TLS (RESP PING)', fn: () => parseClientHelloSni(redisPing) },
  ]);
}

void main();
