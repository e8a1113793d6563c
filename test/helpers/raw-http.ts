/**
 * Sends one HTTP/1.1 request as raw bytes (so a test can send what fetch refuses to: malformed
 * percent-encodings, bogus headers, bytes that are not UTF-8) and reads the response head and, for
 * a Content-Length response, its body. A chunked response (an event stream) yields its first bytes.
 */
import { connect } from 'node:net';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Everything received, head included (to check nothing was echoed). */
  raw: string;
}

export interface RawRequest {
  method: string;
  /** The request target exactly as sent. */
  target: string;
  headers?: Array<[string, string]>;
  body?: string | Buffer;
  /** @default 5000 */
  timeoutMs?: number;
}

/**
 * The response, or null when the server closed the connection without answering (or did not
 * answer within the timeout, when `timeoutIsNull`; otherwise a timeout rejects).
 */
export function rawRequest(port: number, req: RawRequest, timeoutIsNull = false): Promise<RawResponse | null> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let settled = false;
    const done = (value: RawResponse | null, err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => {
      if (timeoutIsNull) done(null);
      else
        done(null, new Error(`no answer to ${req.method} ${req.target.slice(0, 80)} in ${req.timeoutMs ?? 5000} ms`));
    }, req.timeoutMs ?? 5000);
    const tryParse = () => {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const [statusLine, ...lines] = head.split('\r\n');
      const status = Number(/^HTTP\/1\.\d (\d{3})/.exec(statusLine)?.[1] ?? 0);
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const rest = buf.subarray(end + 4);
      const length = headers['content-length'];
      if (length !== undefined) {
        if (rest.length < Number(length)) return;
        done({ status, headers, body: rest.subarray(0, Number(length)).toString('utf8'), raw: buf.toString('latin1') });
      } else if (headers['transfer-encoding'] === 'chunked' || status === 101) {
        done({ status, headers, body: rest.toString('utf8'), raw: buf.toString('latin1') });
      } else if (status === 204 || status === 304) {
        done({ status, headers, body: '', raw: buf.toString('latin1') });
      }
    };
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      tryParse();
    });
    socket.on('error', () => done(null));
    socket.on('close', () => {
      tryParse();
      done(null);
    });
    socket.on('connect', () => {
      const body = req.body === undefined ? undefined : Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body);
      const headers = [['Host', '127.0.0.1'], ...(req.headers ?? [])];
      if (body && !headers.some(([k]) => k.toLowerCase() === 'content-length')) {
        headers.push(['Content-Length', String(body.length)]);
      }
      const head = `${req.method} ${req.target} HTTP/1.1\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
      socket.write(Buffer.from(head, 'latin1'));
      if (body) socket.write(body);
    });
  });
}
