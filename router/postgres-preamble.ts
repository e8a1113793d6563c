/**
 * The first message of a PostgreSQL connection, read by the router on PostgreSQL TLS routes
 * (PostgreSQL protocol docs, "Message Flow: SSL Session Encryption"): a client asks for TLS with
 * an 8-byte SSLRequest and waits for one byte, `S` or `N`, before its ClientHello. The same slot
 * holds a GSSENCRequest, a CancelRequest or the StartupMessage of a plaintext client; a
 * PostgreSQL 17 client with `sslnegotiation=direct` sends a ClientHello at once.
 */

/** Request codes of the startup packet (int32 after the int32 length). */
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** TLS record type of a handshake (RFC 8446 section 5.1): the first byte of a ClientHello. */
export const TLS_HANDSHAKE_RECORD = 0x16;

export type PostgresPreamble =
  | { kind: 'need-more' }
  | { kind: 'ssl-request' }
  | { kind: 'gssenc-request' }
  /** A ClientHello without SSLRequest (direct TLS negotiation). */
  | { kind: 'direct-tls' }
  | { kind: 'cancel-request' }
  /** A StartupMessage or anything else: the client speaks plaintext. */
  | { kind: 'plaintext' };

/** Classifies what a client sent first; `buf` holds what has been read so far. */
export function parsePostgresPreamble(buf: Buffer): PostgresPreamble {
  if (buf.length >= 1 && buf[0] === TLS_HANDSHAKE_RECORD) return { kind: 'direct-tls' };
  if (buf.length < 8) return { kind: 'need-more' };
  const length = buf.readInt32BE(0);
  const code = buf.readInt32BE(4);
  if (length === 8 && code === SSL_REQUEST_CODE) return { kind: 'ssl-request' };
  if (length === 8 && code === GSSENC_REQUEST_CODE) return { kind: 'gssenc-request' };
  if (length === 16 && code === CANCEL_REQUEST_CODE) return { kind: 'cancel-request' };
  return { kind: 'plaintext' };
}

/**
 * An ErrorResponse (severity FATAL) as a server sends it before closing: `E`, int32 length, then
 * fields S, V (severity, non-localized), C (SQLSTATE), M (message), each a NUL-terminated string,
 * and a final NUL. libpq prints the message (`FATAL:  ...`).
 */
export function postgresErrorResponse(sqlState: string, message: string): Buffer {
  const fields = Buffer.from(`SFATAL\0VFATAL\0C${sqlState}\0M${message}\0\0`, 'utf8');
  const out = Buffer.alloc(5 + fields.length);
  out.write('E', 0, 'latin1');
  out.writeInt32BE(4 + fields.length, 1);
  fields.copy(out, 5);
  return out;
}

/** SQLSTATE 28000 (invalid_authorization_specification), what PostgreSQL answers a pg_hba refusal with. */
export const SQLSTATE_INVALID_AUTHORIZATION = '28000';
