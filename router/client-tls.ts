/**
 * How a client starts on a route with TLS settings, before any backend is chosen: the router
 * reads what the client sends first (a ClientHello, or PostgreSQL's SSLRequest preamble), refuses
 * plaintext where the route requires TLS, and either terminates TLS itself (`mode: terminate`,
 * the decrypted stream is relayed) or hands the untouched bytes on (`mode: passthrough`, the
 * backend runs the handshake). What comes out is handed to the route like any accepted client.
 *
 * Terminated connections are relayed in JS (their bytes are decrypted inside Node and cannot be
 * spliced); passthrough connections keep the native relay.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { RouteTls } from '../protocol';
import {
  SQLSTATE_INVALID_AUTHORIZATION,
  TLS_HANDSHAKE_RECORD,
  parsePostgresPreamble,
  postgresErrorResponse,
} from './postgres-preamble';
import type { RouteStats } from './route-stats';
import type { ServerTlsContext } from './tls-context';

/** What the flow needs from the route binding that accepted the client. */
export interface ClientTlsHost {
  readonly stats: RouteStats;
  currentRoute(): { tls?: boolean | RouteTls };
  /** The loaded certificate of a terminating route. */
  tlsContext(): ServerTlsContext | undefined;
  /** The client is ready to be relayed; `initial` holds bytes read from it that the backend must get first. */
  accept(client: Socket, initial: Buffer | undefined, optionsInherited: boolean): void;
  /** A route's certificate could not be loaded (logged at a bounded rate by the router). */
  certificateProblem(message: string): void;
}

const S = Buffer.from('S', 'latin1');
const N = Buffer.from('N', 'latin1');
/** An SSLRequest that leads nowhere (several GSSENCRequests in a row) is not a client. */
const MAX_PREAMBLES = 4;

export function startClientTls(raw: Socket, host: ClientTlsHost, timeoutMs: number): void {
  const settings = host.currentRoute().tls as RouteTls;
  const timer = setTimeout(() => {
    host.stats.tlsHandshakeErrors++;
    raw.destroy();
  }, timeoutMs);
  timer.unref();
  const handOver = (client: Socket, initial: Buffer | undefined): void => {
    clearTimeout(timer);
    host.accept(client, initial, true);
  };
  const refusePlaintext = (answer?: Buffer): void => {
    clearTimeout(timer);
    host.stats.refusedPlaintext++;
    if (answer) raw.end(answer);
    else raw.destroy();
  };
  const terminate = (initial: Buffer | undefined): void => {
    const context = host.tlsContext();
    const secureContext = context?.current();
    if (!context || !secureContext) {
      clearTimeout(timer);
      host.stats.tlsHandshakeErrors++;
      host.certificateProblem(context?.lastError?.message ?? 'no certificate loaded');
      raw.destroy();
      return;
    }
    // Bytes already read go back into the socket; the TLS socket consumes them first.
    if (initial && initial.length > 0) raw.unshift(initial);
    const tls = new TLSSocket(raw, {
      isServer: true,
      secureContext,
      requestCert: context.mutual,
      rejectUnauthorized: context.mutual,
      ...(context.alpn ? { ALPNProtocols: context.alpn } : {}),
    });
    // The relay propagates a client's half-close; TLSSocket takes no such option.
    tls.allowHalfOpen = true;
    const onError = (): void => {
      clearTimeout(timer);
      host.stats.tlsHandshakeErrors++;
      tls.destroy();
    };
    tls.on('error', onError);
    tls.once('secure', () => {
      tls.removeListener('error', onError);
      host.stats.tlsHandshakes++;
      handOver(tls, undefined);
    });
  };

  raw.on('error', () => {
    clearTimeout(timer);
    raw.destroy();
  });
  if (settings.startup === 'tls') {
    // The first byte tells a ClientHello from plaintext, so a plaintext client is refused (and
    // counted as such) rather than failing a handshake.
    readUntil(
      raw,
      (buf) => buf.length >= 1,
      (buf) => {
        if (buf[0] === TLS_HANDSHAKE_RECORD) {
          if (settings.mode === 'terminate') terminate(buf);
          else handOver(raw, buf);
        } else if (settings.policy === 'optional') handOver(raw, buf);
        else refusePlaintext();
      },
    );
    return;
  }
  let preambles = 0;
  const readPreamble = (pending: Buffer): void => {
    readUntil(
      raw,
      (buf) => parsePostgresPreamble(buf).kind !== 'need-more',
      (buf) => {
        const preamble = parsePostgresPreamble(buf);
        switch (preamble.kind) {
          case 'ssl-request':
            if (settings.mode === 'passthrough') {
              handOver(raw, buf);
              return;
            }
            raw.write(S);
            terminate(buf.subarray(8));
            return;
          case 'direct-tls':
            if (settings.mode === 'passthrough') handOver(raw, buf);
            else terminate(buf);
            return;
          case 'gssenc-request':
            // The router has no Kerberos: 'N' tells libpq to go on with an SSLRequest (or
            // plaintext), as a server without GSSAPI encryption answers.
            if (++preambles > MAX_PREAMBLES) {
              refusePlaintext();
              return;
            }
            raw.write(N);
            readPreamble(buf.subarray(8));
            return;
          case 'cancel-request':
            // A CancelRequest carries only a backend pid and secret and gets no answer;
            // PostgreSQL itself accepts it in plaintext, and libpq 15 sends it so.
            handOver(raw, buf);
            return;
          default:
            if (settings.policy === 'optional') handOver(raw, buf);
            else
              refusePlaintext(
                postgresErrorResponse(
                  SQLSTATE_INVALID_AUTHORIZATION,
                  'this route requires TLS: connect with sslmode=require or stronger',
                ),
              );
        }
      },
      pending,
    );
  };
  readPreamble(Buffer.alloc(0));
}

/** Reads from a paused socket until `enough(buffered)`; then pauses it again and calls `done`. */
function readUntil(
  socket: Socket,
  enough: (buf: Buffer) => boolean,
  done: (buf: Buffer) => void,
  pending: Buffer = Buffer.alloc(0),
): void {
  if (pending.length > 0 && enough(pending)) {
    done(pending);
    return;
  }
  let buffered = pending;
  const onData = (chunk: Buffer): void => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    if (!enough(buffered)) return;
    socket.removeListener('data', onData);
    socket.pause();
    done(buffered);
  };
  socket.on('data', onData);
  socket.resume();
}
