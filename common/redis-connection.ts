/**
 * Opens the connection to the system of record. A plain `redis://` URL is one Redis (a laptop);
 * `redis-sentinel://[:password@]host:port[,host:port...]/MASTER[?db=N]` asks Redis Sentinel for
 * the current master of MASTER (production: DESIGN.md "Beyond one machine"), which ioredis
 * follows across Sentinel failovers. `rediss://` and `rediss-sentinel://` do the same over TLS
 * (Sentinels and master alike), verified against the CA in `SF_REDIS_CA_FILE` when it is set
 * (the platform CA, docs/tls.md), else against the system's.
 */
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import type * as IoRedis from 'ioredis';
import type { Redis, RedisOptions } from 'ioredis';
import { ErrorCode, SfError } from './errors';
import { processRedisCredentials, urlHasCredentials } from './redis-credentials';

export interface SentinelTarget {
  sentinels: Array<{ host: string; port: number }>;
  name: string;
  /** The master's ACL user (`redis-sentinel://user:password@...`). */
  username?: string;
  password?: string;
  db?: number;
  /** `rediss-sentinel://`: Sentinels and master are reached over TLS. */
  tls?: boolean;
}

const SENTINEL_SCHEME = 'redis-sentinel://';
const SENTINEL_TLS_SCHEME = 'rediss-sentinel://';

/** The environment variable naming the CA (PEM) that TLS connections to the state store verify with. */
export const REDIS_CA_FILE_ENV = 'SF_REDIS_CA_FILE';

/** TLS options for the state store: the CA of SF_REDIS_CA_FILE when set, else the system's. */
export function stateStoreTls(env: NodeJS.ProcessEnv = process.env): ConnectionOptions {
  const file = env[REDIS_CA_FILE_ENV];
  if (!file) return {};
  try {
    return { ca: readFileSync(file) };
  } catch (err) {
    throw new SfError(
      ErrorCode.InvalidOption,
      `${REDIS_CA_FILE_ENV}=${file} cannot be read: ${(err as Error).message}`,
      REDIS_CA_FILE_ENV,
    );
  }
}
const DEFAULT_SENTINEL_PORT = 26379;

/** Parses a `redis-sentinel://` URL; undefined for any other URL. */
export function parseSentinelUrl(url: string): SentinelTarget | undefined {
  const tls = url.startsWith(SENTINEL_TLS_SCHEME);
  if (!tls && !url.startsWith(SENTINEL_SCHEME)) return undefined;
  const rest = url.slice((tls ? SENTINEL_TLS_SCHEME : SENTINEL_SCHEME).length);
  const slash = rest.indexOf('/');
  if (slash < 0)
    throw new SfError(
      ErrorCode.InvalidOption,
      `${url}: a Sentinel URL needs the master name: redis-sentinel://host:26379/mymaster`,
      'redis',
    );
  let hosts = rest.slice(0, slash);
  let password: string | undefined;
  let username: string | undefined;
  const at = hosts.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = hosts.slice(0, at);
    const colon = userinfo.indexOf(':');
    if (colon >= 0) {
      username = decodeURIComponent(userinfo.slice(0, colon)) || undefined;
      password = decodeURIComponent(userinfo.slice(colon + 1));
    } else {
      password = decodeURIComponent(userinfo);
    }
    hosts = hosts.slice(at + 1);
  }
  const [name, query] = rest.slice(slash + 1).split('?') as [string, string | undefined];
  if (!name) throw new SfError(ErrorCode.InvalidOption, `${url}: the master name is missing`, 'redis');
  const sentinels = hosts.split(',').map((hp) => {
    const m = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d+))?$/.exec(hp);
    if (!m) throw new SfError(ErrorCode.InvalidOption, `${url}: '${hp}' is not host:port`, 'redis');
    return { host: m[1] ?? m[2]!, port: m[3] ? Number(m[3]) : DEFAULT_SENTINEL_PORT };
  });
  const db = query ? new URLSearchParams(query).get('db') : null;
  return {
    sentinels,
    name: decodeURIComponent(name),
    ...(username !== undefined ? { username } : {}),
    password,
    db: db === null ? undefined : Number(db),
    ...(tls ? { tls: true } : {}),
  };
}

/**
 * A Redis client for `url` (redis://, rediss://, or redis-sentinel://) with `options`. It presents
 * the process's credentials (common/redis-credentials.ts) unless the URL carries its own user or
 * password, or `options` names them.
 */
export function createRedis(url: string, options: RedisOptions = {}): Redis {
  // Loaded on first use: common/ is imported by every role, and a router serving a route file
  // never talks to Redis, so it should not pay for loading the client.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Redis: RedisClient } = require('ioredis') as typeof IoRedis;
  const creds = processRedisCredentials();
  const fromFile = creds && !urlHasCredentials(url) ? creds : undefined;
  const auth: RedisOptions = {};
  if (fromFile && options.password === undefined && options.username === undefined) {
    if (fromFile.username !== undefined) auth.username = fromFile.username;
    auth.password = fromFile.password;
  }
  if (creds?.sentinelUsername !== undefined) auth.sentinelUsername = creds.sentinelUsername;
  if (creds?.sentinelPassword !== undefined) auth.sentinelPassword = creds.sentinelPassword;
  const sentinel = parseSentinelUrl(url);
  // ioredis lets the URL's own fields win over the options object, which is the precedence wanted;
  // for rediss:// it turns TLS on itself, and the options only add the CA (a caller's tls wins).
  if (!sentinel)
    return new RedisClient(url, {
      ...(url.startsWith('rediss://') && !options.tls ? { tls: stateStoreTls() } : {}),
      ...options,
      ...auth,
    });
  const tls = sentinel.tls ? (options.tls ?? stateStoreTls()) : undefined;
  return new RedisClient({
    ...(tls ? { tls, sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
    ...options,
    ...auth,
    sentinels: sentinel.sentinels,
    name: sentinel.name,
    ...(sentinel.password !== undefined ? { password: sentinel.password } : {}),
    ...(sentinel.username !== undefined ? { username: sentinel.username } : {}),
    db: sentinel.db,
  });
}
