import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/**
 * Where `freePort` looks: above the blocks of `freePortBlock` (22000-29999) and below the
 * kernel's ephemeral range. A port the kernel handed out by `listen(0)` is an ephemeral one, and
 * any outgoing connection made meanwhile (a client, a benchmark on the same host) may take it as
 * its local port before the test's server binds it; ports below the range are never picked that
 * way.
 */
const FREE_PORT_FROM = 30_000;
const FREE_PORT_TO = Math.min(32_767, ephemeralFloor() - 1);

function ephemeralFloor(): number {
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    return Number.isInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/** Ports handed out lately, so that calls made before any of them is bound return distinct ports. */
const handedOut: number[] = [];
const HANDED_OUT_KEPT = 1_000;

function listensAt(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

function kernelPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A TCP port nothing listens on now, below the ephemeral range (FREE_PORT_FROM says why) and not
 * handed out lately; the kernel's choice where that range has no room.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let tries = 0; FREE_PORT_TO > FREE_PORT_FROM && tries < 200; tries++) {
    const port = FREE_PORT_FROM + Math.floor(Math.random() * (FREE_PORT_TO - FREE_PORT_FROM + 1));
    if (handedOut.includes(port) || !(await listensAt(port, host))) continue;
    handedOut.push(port);
    if (handedOut.length > HANDED_OUT_KEPT) handedOut.shift();
    return port;
  }
  return kernelPort(host);
}

/** A port in [from, to] that nothing listens on now (for APIs that only accept a range). */
export async function freePortInRange(from: number, to: number, host = '127.0.0.1'): Promise<number> {
  const start = from + Math.floor(Math.random() * (to - from + 1));
  for (let k = 0; k <= to - from; k++) {
    const port = from + ((start - from + k) % (to - from + 1));
    if (await listensAt(port, host)) return port;
  }
  throw new Error(`no free port in ${from}-${to}`);
}
