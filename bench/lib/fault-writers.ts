/**
 * Writers through the router that log every acknowledged write, the history the fault checker
 * judges against. A write counts as acknowledged only when the service's `durability: sync`
 * promise covers it (docs/fencing.md, "Durability"):
 * - Redis: `SET` then `WAIT 1 1000` reporting at least one replica;
 * - PostgreSQL: an autocommit `INSERT` of a unique id whose reply arrived (with
 *   `synchronous_commit on`, the reply comes after the sync standby has the commit).
 * A write whose outcome is unknown (timeout, reset) is a failure and never an acknowledgement.
 *
 * Every client connects as a service key's user (no service answers without one): a
 * Redis ACL user (`AUTH username password`), a PostgreSQL SCRAM-SHA-256 role.
 *
 * All times are `performance.now()` milliseconds, the checker's single clock.
 */
import { Redis } from 'ioredis';
import { PgConnection } from './fault-pg-wire';

export type EngineName = 'redis' | 'postgres';

/** A service key's user, from `POST /v3/service_instances/:name/keys`. */
export interface ServiceAuth {
  username: string;
  password: string;
}

export interface AckedWrite {
  id: number;
  issuedAt: number;
  ackedAt: number;
}

export interface FailedWrite {
  id: number;
  at: number;
  error: string;
}

export interface ServiceWriter {
  readonly engine: EngineName;
  readonly service: string;
  readonly acked: AckedWrite[];
  readonly failed: FailedWrite[];
  /** When the writer started its current attempt; undefined between attempts. */
  readonly attemptStartedAt: number | undefined;
  /** The first acknowledged write that was issued at or after `t`. */
  firstAckIssuedAfter(t: number): AckedWrite | undefined;
  failedBetween(from: number, to: number): number;
  /** Since when the writer has had no acknowledgement, if its latest attempt failed or hangs. */
  failingSince(): number | undefined;
  stop(): Promise<void>;
}

export const PG_TABLE = 'sf_fault_writes';
/** Pause between writes: about 50 writes per second per service, light on a shared machine. */
const WRITE_GAP_MS = 20;
const RETRY_GAP_MS = 50;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function redisKey(runId: string, id: number): string {
  return `fw:${runId}:${id}`;
}

abstract class WriterBase implements ServiceWriter {
  readonly acked: AckedWrite[] = [];
  readonly failed: FailedWrite[] = [];
  attemptStartedAt: number | undefined;
  protected stopped = false;
  private loop: Promise<void> | undefined;
  private lastAckAt = performance.now();
  private lastFailedAt: number | undefined;

  constructor(
    readonly engine: EngineName,
    readonly service: string,
    protected readonly port: number,
    protected readonly auth: ServiceAuth,
  ) {}

  start(): this {
    this.loop = this.run();
    return this;
  }

  /** Performs write `id`; resolves true when acknowledged, false when refused, throws on error. */
  protected abstract write(id: number): Promise<boolean>;
  protected abstract close(): void;

  private async run(): Promise<void> {
    for (let id = 1; !this.stopped; id++) {
      const issuedAt = performance.now();
      this.attemptStartedAt = issuedAt;
      let error = '';
      try {
        if (await this.write(id)) {
          const ackedAt = performance.now();
          this.acked.push({ id, issuedAt, ackedAt });
          this.lastAckAt = ackedAt;
          this.lastFailedAt = undefined;
        } else error = 'not acknowledged';
      } catch (err) {
        error = (err as Error).message;
      }
      this.attemptStartedAt = undefined;
      if (error) {
        const at = performance.now();
        this.failed.push({ id, at, error });
        this.lastFailedAt ??= at;
        await sleep(RETRY_GAP_MS);
      } else await sleep(WRITE_GAP_MS);
    }
  }

  firstAckIssuedAfter(t: number): AckedWrite | undefined {
    // Acknowledgements are appended in issue order, so a binary search finds the first.
    let lo = 0;
    let hi = this.acked.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.acked[mid].issuedAt < t) lo = mid + 1;
      else hi = mid;
    }
    return this.acked[lo];
  }

  failedBetween(from: number, to: number): number {
    return this.failed.filter((f) => f.at >= from && f.at < to).length;
  }

  failingSince(): number | undefined {
    if (this.lastFailedAt !== undefined) return this.lastAckAt;
    // A write that has hung for over a second counts as failing too (a COMMIT without a standby).
    if (this.attemptStartedAt !== undefined && performance.now() - this.attemptStartedAt > 1_000) return this.lastAckAt;
    return undefined;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    this.close();
  }
}

class RedisWriter extends WriterBase {
  private readonly client: Redis;

  constructor(
    service: string,
    port: number,
    private readonly runId: string,
    auth: ServiceAuth,
  ) {
    super('redis', service, port, auth);
    // No offline queue and no retries: a command either reaches the current connection or fails
    // at once, so each attempt has one clear outcome.
    this.client = new Redis({
      host: '127.0.0.1',
      port,
      username: auth.username,
      password: auth.password,
      retryStrategy: () => RETRY_GAP_MS,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      connectTimeout: 1_000,
      commandTimeout: 2_000,
    });
    this.client.on('error', () => undefined);
  }

  protected async write(id: number): Promise<boolean> {
    if ((await this.client.set(redisKey(this.runId, id), String(id))) !== 'OK') return false;
    return Number(await this.client.call('WAIT', '1', '1000')) >= 1;
  }

  protected close(): void {
    this.client.disconnect();
  }
}

class PostgresWriter extends WriterBase {
  private conn: PgConnection | undefined;

  constructor(service: string, port: number, auth: ServiceAuth) {
    super('postgres', service, port, auth);
  }

  protected async write(id: number): Promise<boolean> {
    if (!this.conn || this.conn.closed) {
      this.conn?.close();
      this.conn = undefined;
      const conn = await PgConnection.connect('127.0.0.1', this.port, 1_000, this.auth);
      await conn.query(`CREATE TABLE IF NOT EXISTS ${PG_TABLE} (id bigint PRIMARY KEY)`, 3_000);
      this.conn = conn;
    }
    try {
      const r = await this.conn.query(`INSERT INTO ${PG_TABLE} (id) VALUES (${id})`, 2_000);
      return r.command === 'INSERT 0 1';
    } catch (err) {
      // A refused or timed-out statement leaves no usable session behind a router failover.
      this.conn.close();
      this.conn = undefined;
      throw err;
    }
  }

  protected close(): void {
    this.conn?.close();
  }
}

export function startWriter(
  engine: EngineName,
  service: string,
  routePort: number,
  runId: string,
  auth: ServiceAuth,
): ServiceWriter {
  return engine === 'redis'
    ? new RedisWriter(service, routePort, runId, auth).start()
    : new PostgresWriter(service, routePort, auth).start();
}

/**
 * One fresh write through the router, as a client arriving now would make it; true when it is
 * acknowledged within `timeoutMs`. Used to test a `running` status.
 */
export async function probeWrite(
  engine: EngineName,
  routePort: number,
  auth: ServiceAuth,
  timeoutMs = 3_000,
): Promise<string | null> {
  if (engine === 'redis') {
    const client = new Redis({
      host: '127.0.0.1',
      port: routePort,
      username: auth.username,
      password: auth.password,
      lazyConnect: true,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      connectTimeout: timeoutMs,
      commandTimeout: timeoutMs,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
      if ((await client.set('fw:probe', String(Date.now()))) !== 'OK') return 'SET refused';
      const n = Number(await client.call('WAIT', '1', String(Math.min(1_000, timeoutMs))));
      return n >= 1 ? null : `WAIT 1 reported ${n} replicas`;
    } catch (err) {
      return (err as Error).message;
    } finally {
      client.disconnect();
    }
  }
  let conn: PgConnection | undefined;
  try {
    conn = await PgConnection.connect('127.0.0.1', routePort, timeoutMs, auth);
    await conn.query(
      'CREATE TABLE IF NOT EXISTS sf_fault_probe (k int PRIMARY KEY, at timestamptz); ' +
        'INSERT INTO sf_fault_probe VALUES (1, now()) ON CONFLICT (k) DO UPDATE SET at = now()',
      timeoutMs,
    );
    return null;
  } catch (err) {
    return (err as Error).message;
  } finally {
    conn?.close();
  }
}

/** Which of `ids` are missing from the service, read through the router; throws when it cannot read. */
export async function missingWrites(
  engine: EngineName,
  routePort: number,
  runId: string,
  ids: number[],
  auth: ServiceAuth,
): Promise<number[]> {
  if (ids.length === 0) return [];
  if (engine === 'redis') {
    const client = new Redis({
      host: '127.0.0.1',
      port: routePort,
      username: auth.username,
      password: auth.password,
      lazyConnect: true,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      connectTimeout: 3_000,
      commandTimeout: 5_000,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
      const missing: number[] = [];
      for (let i = 0; i < ids.length; i += 1_000) {
        const chunk = ids.slice(i, i + 1_000);
        const values = await client.mget(...chunk.map((id) => redisKey(runId, id)));
        values.forEach((v, k) => {
          if (v === null) missing.push(chunk[k]);
        });
      }
      return missing;
    } finally {
      client.disconnect();
    }
  }
  const conn = await PgConnection.connect('127.0.0.1', routePort, 3_000, auth);
  try {
    const r = await conn.query(`SELECT id FROM ${PG_TABLE}`, 10_000);
    const present = new Set(r.rows.map((row) => Number(row[0])));
    return ids.filter((id) => !present.has(id));
  } finally {
    conn.close();
  }
}
