/**
 * PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2) that tell the backend
 * the real client address. Only the sending side lives here: the router is the proxy.
 */
import { isIPv4, isIPv6 } from 'node:net';

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

function family(a: ProxyAddresses): 4 | 6 | 0 {
  const src = unmapV4(a.sourceAddress);
  const dst = unmapV4(a.destinationAddress);
  if (isIPv4(src) && isIPv4(dst)) return 4;
  if (isIPv6(src) && isIPv6(dst)) return 6;
  return 0;
}

export function proxyHeaderV1(a: ProxyAddresses): Buffer {
  const fam = family(a);
  if (fam === 0) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const src = fam === 4 ? unmapV4(a.sourceAddress) : a.sourceAddress;
  const dst = fam === 4 ? unmapV4(a.destinationAddress) : a.destinationAddress;
  return Buffer.from(`PROXY TCP${fam} ${src} ${dst} ${a.sourcePort} ${a.destinationPort}\r\n`, 'latin1');
}

function ipv6Bytes(address: string): Buffer {
  const out = Buffer.alloc(16);
  let text = address;
  // An embedded dotted IPv4 tail (::ffff:1.2.3.4) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, -v4[1]!.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const zeros = 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(tail === undefined ? 0 : zeros).fill('0'), ...tailGroups];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16) || 0, i * 2));
  return out;
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
