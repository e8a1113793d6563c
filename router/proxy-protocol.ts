/**
 * PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2) that tell the backend
 * the real client address. Only the sending side lives here: the router is the proxy.
 */
import { isIPv4, isIPv6 } from 'node:net';
import ipaddr from 'ipaddr.js';

export interface ProxyAddresses {
  sourceAddress: string;
  sourcePort: number;
  destinationAddress: string;
  destinationPort: number;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_VERSION_PROXY = 0x21;
const V2_VERSION_LOCAL = 0x20;
const V2_TCP4 = 0x11;
const V2_TCP6 = 0x21;

/** Node reports IPv4 clients of a dual-stack socket as `::ffff:a.b.c.d`; the header wants a.b.c.d. */
function unmapV4(address: string): string {
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

/** A link-local IPv6 address may carry a zone (`fe80::1%eth0`), which has no place in a header. */
function withoutZone(address: string): string {
  const zone = address.indexOf('%');
  return zone < 0 ? address : address.slice(0, zone);
}

/** Both Node and the byte encoder (ipaddr.js) must read it as IPv6, so encoding cannot throw. */
function isIPv6Text(address: string): boolean {
  const bare = withoutZone(address);
  return isIPv6(bare) && ipaddr.IPv6.isValid(bare);
}

function isPort(p: number): boolean {
  return Number.isInteger(p) && p >= 0 && p <= 65535;
}

/**
 * The header's address family, 0 when the addresses cannot be told (a socket already closed
 * reports none) or the ports are not ports: the header then says UNKNOWN (v1) or LOCAL (v2).
 */
function family(a: ProxyAddresses): 4 | 6 | 0 {
  if (!isPort(a.sourcePort) || !isPort(a.destinationPort)) return 0;
  const src = unmapV4(a.sourceAddress);
  const dst = unmapV4(a.destinationAddress);
  if (isIPv4(src) && isIPv4(dst)) return 4;
  if (isIPv6Text(src) && isIPv6Text(dst)) return 6;
  return 0;
}

export function proxyHeaderV1(a: ProxyAddresses): Buffer {
  const fam = family(a);
  if (fam === 0) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const src = fam === 4 ? unmapV4(a.sourceAddress) : withoutZone(a.sourceAddress);
  const dst = fam === 4 ? unmapV4(a.destinationAddress) : withoutZone(a.destinationAddress);
  return Buffer.from(`PROXY TCP${fam} ${src} ${dst} ${a.sourcePort} ${a.destinationPort}\r\n`, 'latin1');
}

/** The 16 bytes of an IPv6 address (every textual form, an embedded dotted IPv4 tail included). */
function ipv6Bytes(address: string): Buffer {
  return Buffer.from(ipaddr.IPv6.parse(withoutZone(address)).toByteArray());
}

export function proxyHeaderV2(a: ProxyAddresses): Buffer {
  const fam = family(a);
  if (fam === 0) {
    const local = Buffer.alloc(16);
    V2_SIGNATURE.copy(local, 0);
    local[12] = V2_VERSION_LOCAL;
    local[13] = 0x00;
    local.writeUInt16BE(0, 14);
    return local;
  }
  const addrLen = fam === 4 ? 12 : 36;
  const out = Buffer.alloc(16 + addrLen);
  V2_SIGNATURE.copy(out, 0);
  out[12] = V2_VERSION_PROXY;
  out[13] = fam === 4 ? V2_TCP4 : V2_TCP6;
  out.writeUInt16BE(addrLen, 14);
  if (fam === 4) {
    unmapV4(a.sourceAddress)
      .split('.')
      .forEach((o, i) => (out[16 + i] = Number(o)));
    unmapV4(a.destinationAddress)
      .split('.')
      .forEach((o, i) => (out[20 + i] = Number(o)));
    out.writeUInt16BE(a.sourcePort, 24);
    out.writeUInt16BE(a.destinationPort, 26);
  } else {
    ipv6Bytes(a.sourceAddress).copy(out, 16);
    ipv6Bytes(a.destinationAddress).copy(out, 32);
    out.writeUInt16BE(a.sourcePort, 48);
    out.writeUInt16BE(a.destinationPort, 50);
  }
  return out;
}

export function proxyHeader(version: 1 | 2, a: ProxyAddresses): Buffer {
  return version === 1 ? proxyHeaderV1(a) : proxyHeaderV2(a);
}
