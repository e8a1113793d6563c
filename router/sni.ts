/**
 * Reads the server name (SNI, RFC 6066 section 3) from a TLS ClientHello without terminating
 * TLS, so several services can share one TLS port. Only the first handshake record is read:
 * clients put the whole ClientHello in it in practice, and a router must not buffer without bound.
 */

export type SniResult = { kind: 'need-more' } | { kind: 'not-tls' } | { kind: 'done'; serverName: string | undefined };

const TLS_HANDSHAKE = 0x16;
const CLIENT_HELLO = 0x01;
const EXT_SERVER_NAME = 0x0000;
const NAME_TYPE_HOST = 0x00;
/** A TLS record carries at most 2^14 bytes of plaintext, plus its 5-byte header. */
export const MAX_CLIENT_HELLO_BYTES = 16_384 + 5;

const NEED_MORE: SniResult = { kind: 'need-more' };
const NOT_TLS: SniResult = { kind: 'not-tls' };
const NO_NAME: SniResult = { kind: 'done', serverName: undefined };

export function parseClientHelloSni(buf: Buffer): SniResult {
  if (buf.length < 1) return NEED_MORE;
  if (buf[0] !== TLS_HANDSHAKE) return NOT_TLS;
  if (buf.length < 5) return NEED_MORE;
  const recordLength = buf.readUInt16BE(3);
  const end = 5 + recordLength;
  if (buf.length < end) return end > MAX_CLIENT_HELLO_BYTES ? NOT_TLS : NEED_MORE;
  let p = 5;
  if (buf[p] !== CLIENT_HELLO) return NOT_TLS;
  p += 4; // handshake type and 24-bit length
  p += 2 + 32; // client_version, random
  if (p + 1 > end) return NO_NAME;
  p += 1 + buf[p]!; // session_id
  if (p + 2 > end) return NO_NAME;
  p += 2 + buf.readUInt16BE(p); // cipher_suites
  if (p + 1 > end) return NO_NAME;
  p += 1 + buf[p]!; // compression_methods
  if (p + 2 > end) return NO_NAME;
  const extEnd = Math.min(end, p + 2 + buf.readUInt16BE(p));
  p += 2;
  while (p + 4 <= extEnd) {
    const type = buf.readUInt16BE(p);
    const len = buf.readUInt16BE(p + 2);
    p += 4;
    if (type === EXT_SERVER_NAME && p + len <= extEnd) {
      let q = p + 2; // server_name_list length
      const listEnd = p + len;
      while (q + 3 <= listEnd) {
        const nameType = buf[q]!;
        const nameLen = buf.readUInt16BE(q + 1);
        q += 3;
        if (q + nameLen > listEnd) break;
        if (nameType === NAME_TYPE_HOST)
          return { kind: 'done', serverName: buf.toString('latin1', q, q + nameLen).toLowerCase() };
        q += nameLen;
      }
      return NO_NAME;
    }
    p += len;
  }
  return NO_NAME;
}

/** `*.example.com` matches exactly one label in front of `example.com`; names compare case-insensitively. */
export function hostMatches(pattern: string, serverName: string): boolean {
  const pat = pattern.toLowerCase();
  if (!pat.startsWith('*.')) return pat === serverName;
  const suffix = pat.slice(1);
  if (!serverName.endsWith(suffix)) return false;
  const label = serverName.slice(0, -suffix.length);
  return label.length > 0 && !label.includes('.');
}
