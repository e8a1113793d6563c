/**
 * Opens the connection to the system of record. A plain `redis://` URL is one Redis (a laptop);
 * `redis-sentinel://[:password@]host:port[,host:port...]/MASTER[?db=N]` asks Redis Sentinel for
 * the current master of MASTER (production: DESIGN.md "Beyond one machine"), which ioredis
 * follows across Sentinel failovers.
 */
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
}

const SENTINEL_SCHEME = 'redis-sentinel://';
const DEFAULT_SENTINEL_PORT = 26379;

/** Parses a `redis-sentinel://` URL; undefined for any other URL. */
export function parseSentinelUrl(url: string): SentinelTarget | undefined {
  if (!url.startsWith(SENTINEL_SCHEME)) return undefined;
  const rest = url.slice(SENTINEL_SCHEME.length);
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
  // ioredis lets the URL's own fields win over the options object, which is the precedence wanted.
  if (!sentinel) return new RedisClient(url, { ...options, ...auth });
  return new RedisClient({
    ...options,
    ...auth,
    sentinels: sentinel.sentinels,
    name: sentinel.name,
    ...(sentinel.password !== undefined ? { password: sentinel.password } : {}),
    ...(sentinel.username !== undefined ? { username: sentinel.username } : {}),
    db: sentinel.db,
  });
}
