/**
 * The smallest PostgreSQL client the fault checker needs: one connection, the simple query
 * protocol, trust authentication (the cells trust the platform user on loopback, docs/cells.md).
 * The project has no PostgreSQL driver, and spawning `psql` per write would cost a process per
 * acknowledged write; this speaks protocol 3.0 directly over a socket.
 *
 * Every query has a deadline: a COMMIT that waits for a missing sync standby hangs forever, and the
 * checker must count that write as failed (not acknowledged) rather than wait with it.
 */
import { connect, type Socket } from 'node:net';

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

  private constructor(private readonly socket: Socket) {
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

  /** Connects and completes the startup handshake within `timeoutMs`. */
  static connect(host: string, port: number, timeoutMs = 2_000, user = 'postgres'): Promise<PgConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, host);
      socket.setNoDelay(true);
      const conn = new PgConnection(socket);
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
        const params = Buffer.from(`user\0${user}\0database\0postgres\0application_name\0sf-fault\0\0`);
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
      case 'R': {
        const code = body.readInt32BE(0);
        if (code !== 0) p.error = new PgError(`authentication method ${code} is not supported (trust only)`, undefined);
        break;
      }
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

/** Connects, runs one query, closes. */
export async function pgQueryOnce(host: string, port: number, sql: string, timeoutMs = 2_000): Promise<PgResult> {
  const conn = await PgConnection.connect(host, port, timeoutMs);
  try {
    return await conn.query(sql, timeoutMs);
  } finally {
    conn.close();
  }
}
