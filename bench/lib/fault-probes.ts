/**
 * Asking an instance directly, on its own port and not through the router, whether it is a
 * primary: Redis `INFO replication` `role:`, PostgreSQL `pg_is_in_recovery()`. Two answers are
 * kept apart:
 * - `primary`: the engine says it is a primary (what a client connecting to it would find);
 * - `acceptsWrites`: it would also commit a write now — a Redis primary with the replicas its
 *   `min-replicas-to-write` asks for, a PostgreSQL primary with a sync standby when
 *   `synchronous_standby_names` is set. A primary that fails these refuses or hangs writes.
 *
 * Probes connect as a service key's user, which has no administration rights:
 * - Redis: no `ROLE` or `CONFIG GET` (both @admin). `INFO replication` prints
 *   `min_slaves_good_slaves` only when `min-replicas-to-write` (and its max lag) is set; the
 *   engine sets it to 1 whenever it sets it (cell/engine-redis.ts), so its presence means "1
 *   required".
 * - PostgreSQL: `pg_stat_replication` shows a non-privileged role only the walsenders' pids, not
 *   their `sync_state`; with `synchronous_standby_names = '*'` (the engine's only non-empty
 *   value) any connected standby is a sync candidate, so the probe counts walsenders.
 */
import { Redis } from 'ioredis';
import { PgConnection } from './fault-pg-wire';
import type { EngineName, ServiceAuth } from './fault-writers';

export interface RoleProbe {
  address: string;
  reachable: boolean;
  primary: boolean;
  acceptsWrites: boolean;
  /** Engine-specific facts for the report, e.g. `master, 1/1 good replicas`. */
  detail: string;
}

function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, 'm').exec(info)?.[1]?.trim();
}

async function probeRedis(host: string, port: number, auth: ServiceAuth, timeoutMs: number): Promise<RoleProbe> {
  const address = `${host}:${port}`;
  const client = new Redis({
    host,
    port,
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
    const info = await client.info('replication');
    const role = infoField(info, 'role') ?? 'unknown';
    if (role !== 'master') return { address, reachable: true, primary: false, acceptsWrites: false, detail: role };
    const goodField = infoField(info, 'min_slaves_good_slaves');
    const min = goodField === undefined ? 0 : 1;
    const good = Number(goodField ?? infoField(info, 'connected_slaves') ?? 0);
    return {
      address,
      reachable: true,
      primary: true,
      acceptsWrites: min === 0 || good >= min,
      detail: `master, ${good} good replica(s) of ${min} required`,
    };
  } catch (err) {
    return { address, reachable: false, primary: false, acceptsWrites: false, detail: (err as Error).message };
  } finally {
    client.disconnect();
  }
}

async function probePostgres(host: string, port: number, auth: ServiceAuth, timeoutMs: number): Promise<RoleProbe> {
  const address = `${host}:${port}`;
  let conn: PgConnection | undefined;
  try {
    conn = await PgConnection.connect(host, port, timeoutMs, auth);
    const r = await conn.query(
      "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'), " +
        '(SELECT count(*) FROM pg_stat_replication)',
      timeoutMs,
    );
    const [recovery, standbyNames, syncCount] = r.rows[0] ?? [];
    if (recovery === 't')
      return { address, reachable: true, primary: false, acceptsWrites: false, detail: 'in recovery' };
    const needsStandby = (standbyNames ?? '') !== '';
    const standbys = Number(syncCount ?? 0);
    return {
      address,
      reachable: true,
      primary: true,
      acceptsWrites: !needsStandby || standbys > 0,
      detail: `pg_is_in_recovery()=f, ${standbys} standby(s) streaming${needsStandby ? ` (synchronous_standby_names '${standbyNames}')` : ''}`,
    };
  } catch (err) {
    return { address, reachable: false, primary: false, acceptsWrites: false, detail: (err as Error).message };
  } finally {
    conn?.close();
  }
}

export function probeRole(
  engine: EngineName,
  host: string,
  port: number,
  auth: ServiceAuth,
  timeoutMs = 800,
): Promise<RoleProbe> {
  return engine === 'redis' ? probeRedis(host, port, auth, timeoutMs) : probePostgres(host, port, auth, timeoutMs);
}
