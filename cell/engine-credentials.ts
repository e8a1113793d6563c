/**
 * How a service's credentials (cell-protocol.ts `InstanceCredentials`) become engine users
 *: Redis ACL rules with SHA-256 password hashes, PostgreSQL SCRAM-SHA-256
 * verifiers. Engines are given hashes and verifiers, never a plaintext password they do not need,
 * so a copy of `users.acl` or of `pg_authid` does not hand out the passwords.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import type { EngineUser, InstanceCredentials } from '../protocol';

/** Client users of a Redis service: everything but administration (CONFIG, ACL, REPLICAOF...). */
export const REDIS_CLIENT_RULES = '~* &* +@all -@admin';
/** What a replica needs on its primary, and nothing else. */
export const REDIS_REPLICATION_RULES = '+psync +replconf +ping';
/** The platform's management user: health, INFO, REPLICAOF, the commit check, ACL changes. */
export const REDIS_ADMIN_RULES = '~* &* +@all';
/**
 * What redis_exporter needs and nothing more: no key, no channel, no write. Not `CONFIG GET`,
 * which would hand out `masterauth` (the replication password); the exporter reads maxmemory and
 * the like from INFO instead, and only its `redis_config_*` series are missing.
 */
export const REDIS_MONITOR_RULES =
  '-@all +ping +auth +hello +select +echo +quit +reset +info +slowlog|get +slowlog|len +latency|latest +latency|histogram +memory|stats +client|info +client|setname';

/** PostgreSQL's predefined role for monitoring: reads statistics and settings, no table data. */
export const PG_MONITOR_ROLE = 'pg_monitor';

/** PostgreSQL group role of every client user; their sessions run as it, so it owns their objects. */
export const PG_CLIENTS_ROLE = 'sf_clients';

/** The monitoring user's name, as control names it for new services. */
export const MONITORING_USERNAME = 'sf_monitor';

/**
 * Credentials with a monitoring user. A set from before monitoring users existed has none, and
 * its exporters would not start; the cell gives it one whose password is an HMAC of the admin
 * password, so every cell of the service derives the same user, the same way on every pass
 * (idempotent), without a change to the service's record. Knowing it reveals nothing of the
 * admin password. A set that has one is returned as it is.
 */
export function withMonitoringUser(creds: InstanceCredentials): InstanceCredentials {
  if (creds.monitoring) return creds;
  const password = createHmac('sha256', creds.admin.password).update('sf monitoring user').digest('base64url');
  return { ...creds, monitoring: { username: MONITORING_USERNAME, password } };
}

export function redisPasswordHash(password: string): string {
  return createHash('sha256').update(password).digest('hex');
}

/** The ACL rules of each user, `default` switched off (so a connection without AUTH gets NOAUTH). */
export function redisAclUsers(creds: InstanceCredentials): Map<string, string> {
  const users = new Map<string, string>();
  users.set(creds.admin.username, `on #${redisPasswordHash(creds.admin.password)} ${REDIS_ADMIN_RULES}`);
  users.set(
    creds.replication.username,
    `on #${redisPasswordHash(creds.replication.password)} ${REDIS_REPLICATION_RULES}`,
  );
  if (creds.monitoring)
    users.set(creds.monitoring.username, `on #${redisPasswordHash(creds.monitoring.password)} ${REDIS_MONITOR_RULES}`);
  for (const user of creds.users)
    users.set(user.username, `on #${redisPasswordHash(user.password)} ${REDIS_CLIENT_RULES}`);
  return users;
}

/** users.acl: `default` off, then every user of the set. */
export function renderRedisAclFile(creds: InstanceCredentials): string {
  const lines = ['user default off resetpass resetkeys resetchannels -@all'];
  for (const [name, rules] of redisAclUsers(creds)) lines.push(`user ${name} ${rules}`);
  return lines.join('\n') + '\n';
}

/**
 * A SCRAM-SHA-256 verifier as PostgreSQL stores it (RFC 5802, RFC 7677):
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. PostgreSQL accepts it in
 * `PASSWORD '...'` and stores it as is, so the plaintext never reaches the server or its logs.
 */
export function scramVerifier(password: string, iterations = 4096, salt = randomBytes(16)): string {
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

export function pgIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function pgLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * The SQL that first sets up a new cluster's platform roles, run in single-user mode right after
 * initdb (no server listens yet, so nothing can connect without a password in between).
 */
export function pgBootstrapSql(superuser: string, creds: InstanceCredentials): string[] {
  const repl = pgIdent(creds.replication.username);
  return [
    `ALTER ROLE ${pgIdent(superuser)} PASSWORD ${pgLiteral(scramVerifier(creds.admin.password))}`,
    `CREATE ROLE ${repl} WITH REPLICATION LOGIN PASSWORD ${pgLiteral(scramVerifier(creds.replication.password))}`,
    `CREATE ROLE ${pgIdent(PG_CLIENTS_ROLE)} NOLOGIN`,
    `GRANT ALL ON SCHEMA public TO ${pgIdent(PG_CLIENTS_ROLE)}`,
    `GRANT CREATE, CONNECT, TEMPORARY ON DATABASE postgres TO ${pgIdent(PG_CLIENTS_ROLE)}`,
    ...(creds.monitoring ? pgMonitorRoleSql(creds.monitoring) : []),
  ];
}

/**
 * The monitoring role: created or given its password, a member of pg_monitor and nothing else.
 * One statement per line (single-user mode ends a statement at a newline), idempotent, so a
 * primary applies it with every credentials set.
 */
export function pgMonitorRoleSql(user: EngineUser): string[] {
  const role = pgIdent(user.username);
  const verifier = pgLiteral(scramVerifier(user.password));
  return [
    `DO $sf$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${pgLiteral(user.username)}) THEN EXECUTE ${pgLiteral(`ALTER ROLE ${role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD `)} || ${pgLiteral(verifier)}; ELSE EXECUTE ${pgLiteral(`CREATE ROLE ${role} WITH LOGIN PASSWORD `)} || ${pgLiteral(verifier)}; END IF; END $sf$`,
    `GRANT ${pgIdent(PG_MONITOR_ROLE)} TO ${role}`,
  ];
}

/**
 * A cluster restored from another service's snapshot (single-user mode): the platform roles get
 * this service's passwords; the replication role is created if the snapshot had another name.
 */
export function pgRestoredRolesSql(superuser: string, creds: InstanceCredentials): string[] {
  const repl = creds.replication.username;
  const verifier = pgLiteral(scramVerifier(creds.replication.password));
  return [
    `ALTER ROLE ${pgIdent(superuser)} PASSWORD ${pgLiteral(scramVerifier(creds.admin.password))}`,
    // One line: single-user mode ends a statement at a newline.
    `DO $sf$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${pgLiteral(repl)}) THEN EXECUTE ${pgLiteral(`ALTER ROLE ${pgIdent(repl)} WITH REPLICATION LOGIN PASSWORD `)} || ${pgLiteral(verifier)}; ELSE EXECUTE ${pgLiteral(`CREATE ROLE ${pgIdent(repl)} WITH REPLICATION LOGIN PASSWORD `)} || ${pgLiteral(verifier)}; END IF; END $sf$`,
    ...(creds.monitoring ? pgMonitorRoleSql(creds.monitoring) : []),
  ];
}

/**
 * The SQL that makes the client roles those of `wanted`, given the ones that exist: new roles join
 * the clients' group (and act as it), existing ones get the current password, roles no longer
 * wanted lose their login, their sessions are terminated, their objects go to the group, and they
 * are dropped (revoking a service key takes effect at once).
 */
export function pgSyncUsersSql(existing: string[], wanted: EngineUser[]): string[] {
  const sql: string[] = [];
  const group = pgIdent(PG_CLIENTS_ROLE);
  for (const user of wanted) {
    const role = pgIdent(user.username);
    const password = pgLiteral(scramVerifier(user.password));
    if (existing.includes(user.username)) sql.push(`ALTER ROLE ${role} LOGIN PASSWORD ${password}`);
    else sql.push(`CREATE ROLE ${role} LOGIN PASSWORD ${password} IN ROLE ${group}`);
    sql.push(`ALTER ROLE ${role} SET role = ${pgLiteral(PG_CLIENTS_ROLE)}`);
  }
  for (const name of existing) {
    if (wanted.some((u) => u.username === name)) continue;
    const role = pgIdent(name);
    sql.push(
      `ALTER ROLE ${role} NOLOGIN`,
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${pgLiteral(name)}`,
      `REASSIGN OWNED BY ${role} TO ${group}`,
      `DROP OWNED BY ${role}`,
      `DROP ROLE ${role}`,
    );
  }
  return sql;
}
