/**
 * The router's own listening addresses, and whether a backend address leads back into one of
 * them. A route whose backend is the router itself makes every client connection open another
 * one, until the descriptor limit is reached and every route fails (one such route made 190,000 looping
 * connections, going on after the client left). Tables are checked when they arrive, and each
 * connection again before it is made, after name resolution, since a name may hide an address.
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';

export interface ListenAddress {
  host: string;
  port: number;
}

/** The `code` of the error a guarded lookup fails with; a connection reports it as a self-loop. */
export const SELF_LOOP_ERROR_CODE = 'ESFSELFLOOP';

interface HostClass {
  /** Canonical address text, or undefined for a name that is not resolved here. */
  address: string | undefined;
  /** 0.0.0.0 or ::: a wildcard when listening, this host's loopback when connecting. */
  unspecified: boolean;
  /** Within 127.0.0.0/8 or ::1. */
  loopback: boolean;
  /**
   * 127.0.0.1, ::1 or `localhost`: the addresses a local client reaches the router on by default,
   * treated as one (with the unspecified addresses).
   */
  defaultLoopback: boolean;
}

const NAME: HostClass = { address: undefined, unspecified: false, loopback: false, defaultLoopback: false };
const LOCALHOST: HostClass = { address: undefined, unspecified: false, loopback: true, defaultLoopback: true };

function canonical(addr: ipaddr.IPv4 | ipaddr.IPv6): string {
  return addr.kind() === 'ipv6' ? (addr as ipaddr.IPv6).toNormalizedString() : addr.toString();
}

/** Classifies a host as written in a route or given to listen(); never throws. */
export function classifyHost(host: string): HostClass {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  // RFC 6761 section 6.3: localhost and every name under it resolve to loopback.
  if (h === 'localhost' || h.endsWith('.localhost')) return LOCALHOST;
  if (!ipaddr.isValid(h)) return NAME;
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    // process() turns an IPv4-mapped IPv6 address (::ffff:127.0.0.1) into the IPv4 address.
    addr = ipaddr.process(h);
  } catch {
    return NAME;
  }
  const range = addr.range();
  const address = canonical(addr);
  return {
    address,
    unspecified: range === 'unspecified',
    loopback: range === 'loopback',
    defaultLoopback: address === '127.0.0.1' || address === '0:0:0:0:0:0:0:1',
  };
}

let localCache: { at: number; addresses: Set<string> } | undefined;
const LOCAL_CACHE_MS = 5_000;

/** This host's interface addresses, canonical; cached briefly (getifaddrs per connect is costly). */
function localAddresses(): Set<string> {
  const now = Date.now();
  if (localCache && now - localCache.at < LOCAL_CACHE_MS) return localCache.addresses;
  const addresses = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const info of list ?? []) {
      const c = classifyHost(info.address);
      if (c.address) addresses.add(c.address);
    }
  }
  localCache = { at: now, addresses };
  return addresses;
}

/**
 * True when connecting to `host`:`port` reaches a socket listening on `listen`. Names other than
 * localhost are not resolved here (see `guardedLookup`). Conservative where the kernel is not:
 * ::1 and 127.0.0.1 count as one, so a change of address family cannot hide a loop.
 */
export function loopsInto(host: string, port: number, listen: ListenAddress): boolean {
  if (port !== listen.port) return false;
  const b = classifyHost(host);
  if (b.address === undefined && !b.defaultLoopback) return false;
  const l = classifyHost(listen.host);
  // Connecting to 0.0.0.0 or :: reaches this host's loopback.
  const reachesDefaultLoopback = b.defaultLoopback || b.unspecified;
  if (l.unspecified) {
    return reachesDefaultLoopback || b.loopback || (b.address !== undefined && localAddresses().has(b.address));
  }
  if (l.defaultLoopback && reachesDefaultLoopback) return true;
  return l.address !== undefined && b.address === l.address;
}

/** The first of `addresses` that `host`:`port` leads into. */
export function ownAddressHit(
  host: string,
  port: number,
  addresses: Iterable<ListenAddress>,
): ListenAddress | undefined {
  for (const a of addresses) if (loopsInto(host, port, a)) return a;
  return undefined;
}

/**
 * A lookup for net.connect that resolves as Node's own does, then fails with
 * SELF_LOOP_ERROR_CODE when any address found leads into `own()`'s addresses, so the connection
 * is never made. Only used for names on a port the router listens on.
 */
export function guardedLookup(port: number, own: () => Iterable<ListenAddress>): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...(options as LookupOptions), all: true }, (err, found: LookupAddress[]) => {
      if (err) {
        callback(err, '', undefined);
        return;
      }
      const hit = found.map((f) => ownAddressHit(f.address, port, own())).find((h) => h !== undefined);
      if (hit) {
        const loop = Object.assign(
          new Error(`${hostname}:${port} resolves to the router's own address ${hit.host}:${hit.port}`),
          { code: SELF_LOOP_ERROR_CODE },
        );
        callback(loop, '', undefined);
        return;
      }
      if ((options as LookupOptions).all) callback(null, found);
      else callback(null, found[0]?.address ?? '', found[0]?.family);
    });
  };
}

/** True for a host net.connect would resolve (not an IP literal). */
export function needsLookup(host: string): boolean {
  return isIP(host) === 0;
}
