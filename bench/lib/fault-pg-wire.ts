/**
 * The smallest PostgreSQL client the fault checker needs: one connection, the simple query
 * protocol, and the password methods a service's pg_hba.conf may ask for: SCRAM-SHA-256 (what
 * every service uses, RFC 5802/7677), md5 and cleartext; trust still works.
 * The project has no PostgreSQL driver, and spawning `psql` per write would cost a process per
 * acknowledged write; this speaks protocol 3.0 directly over a socket.
 *
 * Every query has a deadline: a COMMIT that waits for a missing sync standby hangs forever, and the
 * checker must count that write as failed (not acknowledged) rather than wait with it.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { connect, type Socket } from 'node:net';

/** Who connects: a service key's user and password (`POST /v3/service_instances/:name/keys`). */
export interface PgAuth {
  username: string;
  password: string;
  /** @default 'postgres' */
  database?: string;
}

/** The client side of one SCRAM-SHA-256 exchange (RFC 5802 section 3, RFC 7677). */
interface ScramState {
  clientNonce: string;
  clientFirstBare: string;
  serverSignature?: Buffer;
}

export interface PgResult {
  /** The CommandComplete tag, e.g. `INSERT 0 1`. */
  command: string;
  /** Rows as text columns; null for SQL NULL. */
  rows: Array<Array<string | null>>;
}

export class PgError extends Error {
  constructor(
    message: string,
    readonly sqlState: string | undefined,
  ) {
    super(message);
    this.name = 'PgError';
  }
}

interface Pending {
  resolve(result: PgResult): void;
  reject(err: Error): void;
  rows: Array<Array<string | null>>;
  command: string;
  error: PgError | undefined;
}

export class PgConnection {
  private buffer: Buffer = Buffer.alloc(0);
  private pending: Pending | undefined;
  private closedError: Error | undefined;
  private scram: ScramState | undefined;

  private constructor(
    private readonly socket: Socket,
    private readonly auth: PgAuth | undefined,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    const fail = (err: Error): void => {
      this.closedError ??= err;
      const p = this.pending;
      this.pending = undefined;
      p?.reject(p.error ?? err);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  /**
   * Connects and completes the startup handshake (authentication included) within `timeoutMs`.
   * Without `auth` it connects as `postgres` with no password, which only a trust rule admits.
   */
  static connect(host: string, port: number, timeoutMs = 2_000, auth?: PgAuth): Promise<PgConnection> {
    const user = auth?.username ?? 'postgres';
    const database = auth?.database ?? 'postgres';
    return new Promise((resolve, reject) => {
      const socket = connect(port, host);
      socket.setNoDelay(true);
      const conn = new PgConnection(socket, auth);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      conn.pending = {
        rows: [],
        command: '',
        error: undefined,
        resolve: () => {
          clearTimeout(timer);
          resolve(conn);
        },
        reject: (err) => {
          clearTimeout(timer);
          socket.destroy();
          reject(err);
        },
      };
      socket.once('connect', () => {
        const params = Buffer.from(`user\0${user}\0database\0${database}\0application_name\0sf-fault\0\0`);
        const head = Buffer.alloc(8);
        head.writeInt32BE(8 + params.length, 0);
        head.writeInt32BE(196_608, 4); // protocol 3.0
        socket.write(Buffer.concat([head, params]));
      });
    });
  }

  /** Runs one statement (or several separated by `;`); rejects on an error or after `timeoutMs`. */
  query(sql: string, timeoutMs = 2_000): Promise<PgResult> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.pending) return Promise.reject(new Error('a query is already running on this connection'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // The statement's outcome is unknown; the connection cannot be reused.
        this.socket.destroy();
        const p = this.pending;
        this.pending = undefined;
        p?.reject(new Error(`query timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending = {
        rows: [],
        command: '',
        error: undefined,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      const text = Buffer.from(`${sql}\0`);
      const head = Buffer.alloc(5);
      head.write('Q', 0);
      head.writeInt32BE(4 + text.length, 1);
      this.socket.write(Buffer.concat([head, text]));
    });
  }

  get closed(): boolean {
    return this.closedError !== undefined || this.socket.destroyed;
  }

  close(): void {
    if (!this.socket.destroyed) {
      // Terminate, then close: the backend ends at once instead of on the socket's EOF.
      this.socket.end(Buffer.from([0x58, 0, 0, 0, 4]));
      this.socket.destroy();
    }
  }

  /** Answers one Authentication* message; throws when it cannot (no password, bad server proof). */
  private onAuthentication(body: Buffer): void {
    const code = body.readInt32BE(0);
    if (code === 0) return; // AuthenticationOk: ReadyForQuery follows.
    const password = this.auth?.password;
    if (password === undefined)
      throw new PgError(`the server asks for a password (authentication method ${code}) and none was given`, '28P01');
    switch (code) {
      case 3: // AuthenticationCleartextPassword
        this.send('p', Buffer.from(`${password}\0`));
        return;
      case 5: {
        // AuthenticationMD5Password: md5(md5(password || user) || salt), hex, prefixed with md5.
        const salt = body.subarray(4, 8);
        const inner = createHash('md5').update(password).update(this.auth!.username).digest('hex');
        const outer = createHash('md5').update(inner).update(salt).digest('hex');
        this.send('p', Buffer.from(`md5${outer}\0`));
        return;
      }
      case 10: {
        // AuthenticationSASL: a list of mechanisms, each NUL-terminated, then an empty one.
        const mechanisms = body.toString('utf8', 4).split('\0').filter(Boolean);
        if (!mechanisms.includes('SCRAM-SHA-256'))
          throw new PgError(`no supported SASL mechanism in [${mechanisms.join(', ')}]`, undefined);
        const clientNonce = randomBytes(18).toString('base64');
        // The user is taken from the startup packet, so the SCRAM user name stays empty.
        const clientFirstBare = `n=,r=${clientNonce}`;
        this.scram = { clientNonce, clientFirstBare };
        const first = Buffer.from(`n,,${clientFirstBare}`);
        const mech = Buffer.from('SCRAM-SHA-256\0');
        const len = Buffer.alloc(4);
        len.writeInt32BE(first.length, 0);
        this.send('p', Buffer.concat([mech, len, first]));
        return;
      }
      case 11: {
        // AuthenticationSASLContinue: server-first-message `r=<nonce>,s=<salt>,i=<iterations>`.
        const scram = this.scram;
        if (!scram) throw new PgError('SASLContinue before SASL started', undefined);
        const serverFirst = body.toString('utf8', 4);
        const attrs = scramAttributes(serverFirst);
        const nonce = attrs.get('r');
        const salt = attrs.get('s');
        const iterations = Number(attrs.get('i'));
        if (!nonce?.startsWith(scram.clientNonce) || !salt || !Number.isInteger(iterations) || iterations < 1)
          throw new PgError(`bad SCRAM server-first-message '${serverFirst}'`, undefined);
        const salted = pbkdf2Sync(password.normalize('NFKC'), Buffer.from(salt, 'base64'), iterations, 32, 'sha256');
        const clientKey = hmac(salted, 'Client Key');
        const storedKey = createHash('sha256').update(clientKey).digest();
        // c=biws is base64 of the gs2 header `n,,` (no channel binding).
        const clientFinalBare = `c=biws,r=${nonce}`;
        const authMessage = `${scram.clientFirstBare},${serverFirst},${clientFinalBare}`;
        const clientSignature = hmac(storedKey, authMessage);
        const proof = Buffer.alloc(clientKey.length);
        for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i] ^ clientSignature[i];
        scram.serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
        this.send('p', Buffer.from(`${clientFinalBare},p=${proof.toString('base64')}`));
        return;
      }
      case 12: {
        // AuthenticationSASLFinal: `v=<server signature>`; a server that cannot prove it knows
        // the verifier is not the one we meant to talk to.
        const expected = this.scram?.serverSignature;
        const attrs = scramAttributes(body.toString('utf8', 4));
        const got = Buffer.from(attrs.get('v') ?? '', 'base64');
        if (!expected || got.length !== expected.length || !timingSafeEqual(got, expected))
          throw new PgError(
            `SCRAM server signature does not match${attrs.has('e') ? ` (${attrs.get('e')})` : ''}`,
            undefined,
          );
        this.scram = undefined;
        return;
      }
      default:
        throw new PgError(`authentication method ${code} is not supported`, undefined);
    }
  }

  private send(type: string, payload: Buffer): void {
    const head = Buffer.alloc(5);
    head.write(type, 0);
    head.writeInt32BE(4 + payload.length, 1);
    this.socket.write(Buffer.concat([head, payload]));
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= 5) {
      const type = String.fromCharCode(this.buffer[0]);
      const len = this.buffer.readInt32BE(1);
      if (this.buffer.length < 1 + len) return;
      const body = this.buffer.subarray(5, 1 + len);
      this.buffer = this.buffer.subarray(1 + len);
      this.onMessage(type, body);
    }
  }

  private onMessage(type: string, body: Buffer): void {
    const p = this.pending;
    if (!p) return;
    switch (type) {
      case 'R':
        try {
          this.onAuthentication(body);
        } catch (err) {
          // The exchange cannot go on: fail the handshake now rather than wait for the server.
          this.pending = undefined;
          this.socket.destroy();
          p.reject(err as Error);
        }
        break;
      case 'D': {
        const n = body.readInt16BE(0);
        const row: Array<string | null> = [];
        let at = 2;
        for (let i = 0; i < n; i++) {
          const len = body.readInt32BE(at);
          at += 4;
          if (len < 0) row.push(null);
          else {
            row.push(body.toString('utf8', at, at + len));
            at += len;
          }
        }
        p.rows.push(row);
        break;
      }
      case 'C':
        p.command = body.toString('utf8', 0, body.length - 1);
        break;
      case 'E': {
        const fields = new Map<string, string>();
        let at = 0;
        while (at < body.length && body[at] !== 0) {
          const code = String.fromCharCode(body[at]);
          const end = body.indexOf(0, at + 1);
          fields.set(code, body.toString('utf8', at + 1, end));
          at = end + 1;
        }
        p.error = new PgError(fields.get('M') ?? 'error', fields.get('C'));
        // An error during startup is followed by the server closing, not by ReadyForQuery.
        break;
      }
      case 'Z':
        this.pending = undefined;
        if (p.error) p.reject(p.error);
        else p.resolve({ command: p.command, rows: p.rows });
        break;
      default:
        // ParameterStatus, BackendKeyData, RowDescription, NoticeResponse: not needed here.
        break;
    }
  }
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest();
}

/** `a=1,b=2` of a SCRAM message; a value may itself hold `=` (base64 padding). */
function scramAttributes(message: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of message.split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) out.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return out;
}

/** Connects, runs one query, closes. */
export async function pgQueryOnce(
  host: string,
  port: number,
  sql: string,
  timeoutMs = 2_000,
  auth?: PgAuth,
): Promise<PgResult> {
  const conn = await PgConnection.connect(host, port, timeoutMs, auth);
  try {
    return await conn.query(sql, timeoutMs);
  } finally {
    conn.close();
  }
}
