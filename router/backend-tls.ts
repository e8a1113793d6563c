/**
 * TLS from the router to a backend (docs/tls.md, Router to engine): the backend's certificate is
 * verified against the route's `backendCaFile` (the platform CA), or the system's CAs without
 * one, and its name against the route's `backendServerName`, else the address connected to. With
 * `backendCertFile`/`backendKeyFile` the router presents that certificate to the backend (mTLS). PostgreSQL speaks TLS only after an
 * SSLRequest answered `S` (protocol 3.0, "SSL Session Encryption"), so on a route whose clients
 * start that way the router sends one first. Nothing here falls back to plaintext: a backend that
 * fails is an error the connection counts and retries elsewhere.
 */
import { readFileSync, statSync } from 'node:fs';
import { connect as netConnect, isIP, type LookupFunction, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { clientTls, type Backend, type Route } from '../protocol';
import { ROUTER_CIPHERS } from './tls-suites';

/** PostgreSQL's SSLRequest: length 8, code 1234.5679. */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** @default how often (at most) a connection checks whether the CA file changed: 1000 ms */
export const BACKEND_CA_RECHECK_MS = 1_000;

/** Thrown (as a socket error) when TLS to a backend could not even start. */
export const BACKEND_TLS_ERROR_CODE = 'SF_BACKEND_TLS';

interface CachedCa {
  stamp: string;
  checkedAt: number;
  pem: Buffer;
}

const caFiles = new Map<string, CachedCa>();

/**
 * The CA file's contents, re-read when it changes (checked at most once a second). Throws when
 * unreadable. Also reads the router's client certificate and key for mTLS to backends.
 */
export function backendCa(file: string, now = Date.now()): Buffer {
  const cached = caFiles.get(file);
  if (cached && now - cached.checkedAt < BACKEND_CA_RECHECK_MS) return cached.pem;
  const st = statSync(file);
  const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
  if (cached && cached.stamp === stamp) {
    cached.checkedAt = now;
    return cached.pem;
  }
  const pem = readFileSync(file);
  caFiles.set(file, { stamp, checkedAt: now, pem });
  return pem;
}

function backendTlsError(message: string): NodeJS.ErrnoException {
  const err = new Error(message) as NodeJS.ErrnoException;
  err.code = BACKEND_TLS_ERROR_CODE;
  return err;
}

/**
 * Connects to `backend` over TLS. The returned socket emits 'tcpConnect' when the TCP connection
 * is up (so a later error is known to be a TLS failure), 'secureConnect' when verified, and
 * 'error' otherwise. For a PostgreSQL route it is a plain socket first, replaced by the TLS
 * socket through `onSocket` once the backend accepted the SSLRequest.
 */
export function connectBackendTls(
  route: Route,
  backend: Backend,
  lookup: LookupFunction | undefined,
  onSocket: (socket: Socket) => void,
): Socket {
  const settings = clientTls(route);
  let ca: Buffer | undefined;
  const host = backend.host;
  // Node checks the certificate against `servername` when there is one, else against `host`.
  const servername = settings?.backendServerName ?? (isIP(host) ? undefined : host);
  const plain = netConnect({ host, port: backend.port, noDelay: true, ...(lookup ? { lookup } : {}) });
  // mTLS: the certificate the router presents to backends that ask for one.
  let identity: { cert: Buffer; key: Buffer } | undefined;
  try {
    ca = settings?.backendCaFile ? backendCa(settings.backendCaFile) : undefined;
  } catch (err) {
    process.nextTick(() => plain.destroy(backendTlsError(`cannot read the backend CA: ${(err as Error).message}`)));
    return plain;
  }
  try {
    if (settings?.backendCertFile && settings.backendKeyFile)
      identity = { cert: backendCa(settings.backendCertFile), key: backendCa(settings.backendKeyFile) };
  } catch (err) {
    process.nextTick(() =>
      plain.destroy(backendTlsError(`cannot read the router's backend certificate: ${(err as Error).message}`)),
    );
    return plain;
  }
  const secure = (): TLSSocket | undefined => {
    let tls: TLSSocket;
    try {
      tls = tlsConnect({
        socket: plain,
        host,
        servername,
        ciphers: ROUTER_CIPHERS,
        ...(ca ? { ca } : {}),
        ...(identity ?? {}),
      });
    } catch (err) {
      // A certificate read in the middle of its renewal (the new certificate, the old key): the
      // context cannot be built; this backend fails like any TLS failure, the next try rereads.
      plain.destroy(backendTlsError(`cannot start TLS to backend ${backend.id}: ${(err as Error).message}`));
      return undefined;
    }
    onSocket(tls);
    return tls;
  };
  plain.once('connect', () => {
    plain.emit('tcpConnect');
    if (settings?.startup !== 'postgres') {
      secure();
      return;
    }
    plain.write(SSL_REQUEST);
    const onData = (chunk: Buffer): void => {
      plain.removeListener('data', onData);
      plain.pause();
      if (chunk[0] !== 0x53 /* S */ || chunk.length !== 1) {
        plain.destroy(
          backendTlsError(
            `backend ${backend.id} declined TLS (answered the SSLRequest with '${String.fromCharCode(chunk[0] ?? 0)}')`,
          ),
        );
        return;
      }
      secure();
    };
    plain.on('data', onData);
  });
  return plain;
}
