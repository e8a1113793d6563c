/**
 * Asking an instance directly, on its own port and not through the router, whether it is a
 * primary: Redis `ROLE`, PostgreSQL `pg_is_in_recovery()`. Two answers are kept apart:
 * - `primary`: the engine says it is a primary (what a client connecting to it would find);
 * - `acceptsWrites`: it would also commit a write now — a Redis primary with the replicas its
 *   `min-replicas-to-write` asks for, a PostgreSQL primary with a sync standby when
 *   `synchronous_standby_names` is set. A primary that fails these refuses or hangs writes.
 */
import { Redis } from 'ioredis';
import { PgConnection } from './fault-pg-wire';
import type { EngineName } from './fault-writers';

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

async function probeRedis(host: string, port: number, timeoutMs: number): Promise<RoleProbe> {
  const address = `${host}:${port}`;
  const client = new Redis({
    host,
    port,
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const role = (await client.call('ROLE')) as [string, ...unknown[]];
    if (role[0] !== 'master')
      return { address, reachable: true, primary: false, acceptsWrites: false, detail: role[0] };
    const info = await client.info('replication');
    const min = Number(((await client.call('CONFIG', 'GET', 'min-replicas-to-write')) as string[])[1] ?? 0);
    const good = Number(infoField(info, 'min_slaves_good_slaves') ?? infoField(info, 'connected_slaves') ?? 0);
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

async function probePostgres(host: string, port: number, timeoutMs: number): Promise<RoleProbe> {
  const address = `${host}:${port}`;
  let conn: PgConnection | undefined;
  try {
    conn = await PgConnection.connect(host, port, timeoutMs);
    const r = await conn.query(
      "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'), " +
        "(SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))",
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
      detail: `pg_is_in_recovery()=f, ${standbys} sync standby(s)${needsStandby ? ` (synchronous_standby_names '${standbyNames}')` : ''}`,
    };
  } catch (err) {
    return { address, reachable: false, primary: false, acceptsWrites: false, detail: (err as Error).message };
  } finally {
    conn?.close();
  }
}

export function probeRole(engine: EngineName, host: string, port: number, timeoutMs = 800): Promise<RoleProbe> {
  return engine === 'redis' ? probeRedis(host, port, timeoutMs) : probePostgres(host, port, timeoutMs);
}
