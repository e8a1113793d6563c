/**
 * The cell's own SQL to a PostgreSQL instance (health, position, commit check, promote, roles),
 * spoken by the cell itself over TCP instead of through a `psql` process. Both executors reach
 * the server the same way (containers use the host's network), and no `docker exec`, process
 * start, backend fork or SCRAM exchange is paid per statement: a statement through `docker exec
 * psql` cost 0.1-0.5 s on an idle host and seconds on a loaded one.
 *
 * Management connections: one idle connection is kept per instance address, user and
 * application name (the commit check has its own), reused by the next call and closed after a
 * minute unused, when the server ends it (a stop, a restart) or after any error (a session left
 * in a failed transaction is never reused). A call that finds it busy opens another for itself.
 * A reused connection that turns out broken is replaced once, transparently. Output has psql's
 * `-XAt` form (rows on lines, columns joined by `|`, NULL empty, booleans `t`/`f`), which is what
 * the callers parse.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Client, type ClientConfig } from 'pg';

export interface PgTarget {
  host: string;
  port: number;
  user: string;
  database: string;
  password?: string;
  applicationName: string;
  /** PEM of the CA to verify the server against (verify-full); none = plaintext. */
  caFile?: string;
  /** The name the server's certificate must carry, when it is not `host`. */
  serverName?: string;
  /** The certificate and key presented to a server that asks for one (with `caFile`). */
  certFile?: string;
  keyFile?: string;
}

/** How long an idle management connection is kept. */
const IDLE_MS = 60_000;

/** Every column as the server's text, as psql prints it. */
const TEXT_TYPES = { getTypeParser: () => (value: string) => value } as unknown as ClientConfig['types'];

interface Idle {
  client: Client;
  timer: NodeJS.Timeout;
}

/** Idle connections by target (password included, hashed: a rotated one opens a new connection). */
const idle = new Map<string, Idle>();

function keyOf(t: PgTarget): string {
  const secret = createHash('sha256')
    .update(t.password ?? '')
    .digest('hex');
  return [
    t.host,
    t.port,
    t.user,
    t.database,
    t.applicationName,
    t.caFile ?? '',
    t.serverName ?? '',
    t.certFile ?? '',
    secret,
  ].join('\0');
}

async function open(target: PgTarget, timeoutMs: number): Promise<Client> {
  const client = new Client({
    host: target.host,
    port: target.port,
    user: target.user,
    database: target.database,
    // A function: never the cell's PGPASSWORD or ~/.pgpass, only the instance's credentials.
    password: () => target.password ?? '',
    application_name: target.applicationName,
    ssl: target.caFile
      ? {
          ca: await readFile(target.caFile, 'utf8'),
          ...(target.serverName ? { servername: target.serverName } : {}),
          ...(target.certFile && target.keyFile
            ? { cert: await readFile(target.certFile, 'utf8'), key: await readFile(target.keyFile, 'utf8') }
            : {}),
        }
      : false,
    connectionTimeoutMillis: timeoutMs,
    types: TEXT_TYPES,
  });
  // A broken connection is reported through the pending call; this keeps it from being unhandled.
  client.on('error', () => undefined);
  return client;
}

function discard(client: Client): void {
  void client.end().catch(() => undefined);
}

/** The connection's socket, so that an idle one never keeps the process alive. */
function socketOf(client: Client): { ref?: () => void; unref?: () => void } | undefined {
  return (client as unknown as { connection?: { stream?: { ref?: () => void; unref?: () => void } } }).connection
    ?.stream;
}

function park(key: string, client: Client): void {
  if (idle.has(key)) return discard(client);
  socketOf(client)?.unref?.();
  const timer = setTimeout(() => {
    if (idle.get(key)?.client === client) idle.delete(key);
    discard(client);
  }, IDLE_MS);
  timer.unref();
  idle.set(key, { client, timer });
  // The server ended it while idle (a stop or restart of the instance): forget it.
  const forget = (): void => {
    if (idle.get(key)?.client !== client) return;
    clearTimeout(timer);
    idle.delete(key);
  };
  client.once('end', forget);
  client.once('error', forget);
}

function take(key: string): Client | undefined {
  const entry = idle.get(key);
  if (!entry) return undefined;
  idle.delete(key);
  clearTimeout(entry.timer);
  entry.client.removeAllListeners('end');
  entry.client.removeAllListeners('error');
  entry.client.on('error', () => undefined);
  socketOf(entry.client)?.ref?.();
  return entry.client;
}

/**
 * Runs `sql` (one statement, or several in one simple query) and returns its rows as psql -XAt
 * prints them. Rejects with the server's error, or "timed out after N ms" when the statements
 * (and the connection, when one had to be opened) took longer than `timeoutMs`; the connection
 * is then closed, which ends the server's backend once it notices.
 */
export async function pgQuery(target: PgTarget, sql: string, timeoutMs: number): Promise<string> {
  const key = keyOf(target);
  const reused = take(key);
  if (reused) {
    try {
      return await attempt(key, reused, target, sql, timeoutMs, false);
    } catch (err) {
      // A server error (it has a SQLSTATE) or a timeout is the answer; a dead connection is not.
      if ((err as { code?: unknown }).code !== undefined || /timed out after/.test(String(err))) throw err;
    }
  }
  return attempt(key, await open(target, timeoutMs), target, sql, timeoutMs, true);
}

async function attempt(
  key: string,
  client: Client,
  target: PgTarget,
  sql: string,
  timeoutMs: number,
  fresh: boolean,
): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      discard(client);
      reject(new Error(`SQL to ${target.host}:${target.port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    const out = await Promise.race([run(client, sql, fresh), deadline]);
    park(key, client);
    return out;
  } catch (err) {
    discard(client);
    const message = err instanceof Error ? err.message : String(err);
    if (/timed out after/.test(message)) throw err;
    const wrapped = new Error(`SQL to ${target.host}:${target.port} failed: ${message}`, { cause: err });
    const code = (err as { code?: unknown }).code;
    // Keeps the server's SQLSTATE visible to the retry rule above.
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) Object.assign(wrapped, { code });
    throw wrapped;
  } finally {
    clearTimeout(timer);
  }
}

async function run(client: Client, sql: string, connect: boolean): Promise<string> {
  if (connect) await client.connect();
  const result = (await client.query({ text: sql, rowMode: 'array' })) as unknown;
  // Several statements give one result each; psql prints the rows of every one.
  const results = (Array.isArray(result) ? result : [result]) as Array<{ rows?: unknown[][] }>;
  const lines: string[] = [];
  for (const r of results)
    for (const row of r.rows ?? []) lines.push(row.map((v) => (v == null ? '' : String(v))).join('|'));
  return lines.length ? `${lines.join('\n')}\n` : '';
}

/** Closes every idle management connection (a cell shutting down). */
export function closePgConnections(): void {
  for (const key of [...idle.keys()]) {
    const client = take(key);
    if (client) discard(client);
  }
}
