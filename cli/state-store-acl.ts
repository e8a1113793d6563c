/**
 * The locked state store of `sf up`: its redis-server starts from a
 * configuration file with an ACL file where the `default` user needs a password nobody knows — a
 * connection without credentials gets NOAUTH — and each role has its own user with the rules of protocol/acl.ts.
 * Each user's password is generated once and kept in its own credentials file (mode 0600, in a
 * 0700 directory of the data dir); the ACL file holds only SHA-256 hashes of them. Nothing secret
 * goes into argv: redis-server gets the path of its configuration, each role the path of its
 * credentials file.
 *
 * DATA_DIR/state-store/            0700
 *   redis.conf                     0600  port, bind, dir (made 0700), persistence, aclfile
 *   users.acl                      0600  `user NAME on #sha256 RULES...`, regenerated every start
 *   credentials/USER.json          0600  {"username", "password"}; kept across restarts
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  generateRedisPassword,
  readRedisCredentialsFile,
  writeRedisCredentialsFile,
  writeSecretFile,
  type RedisCredentials,
} from '../common/redis-credentials';
import {
  adminAclRules,
  cellAclRules,
  controlAclRules,
  defaultUserAclRules,
  routerAclRules,
  type AclUserRules,
} from '../protocol/acl';

export interface LockedStateStoreOptions {
  /** `sf up`'s data directory; the store's files go to `<dataDir>/state-store`. */
  dataDir: string;
  /** redis-server's own data directory (AOF, RDB). */
  redisDir: string;
  port: number;
  /** @default '127.0.0.1' */
  host?: string;
  keyPrefix: string;
  /** Names of the cells that get a user (`cell-<name>`). */
  cells: string[];
}

export interface LockedStateStore {
  /** Arguments for `redis-server`: only the configuration file's path. */
  serverArgs: string[];
  configFile: string;
  aclFile: string;
  /** The credentials file of `control`, `router`, `admin`, or a cell's user (`cellAclUser`). */
  credentialsFile(user: string): string;
  /** Every user the ACL file defines, `default` excluded. */
  users: string[];
}

/** Quotes a value for redis.conf (double quotes, backslash escapes). */
function confValue(value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** One ACL file line; the password only as its SHA-256, so the ACL file alone grants nothing. */
export function aclFileLine(rules: AclUserRules, password: string | undefined): string {
  const pass = password === undefined ? [] : ['on', `#${createHash('sha256').update(password).digest('hex')}`];
  // `reset` first: the line defines the user whole, whatever an earlier load left.
  return ['user', rules.user, 'reset', ...pass, ...rules.rules].join(' ');
}

/**
 * The credentials of `user` from `file` when it holds them (a restart keeps every password, so
 * processes that outlive `sf up`'s store restart still authenticate); a new password otherwise.
 */
async function credentialsFor(user: string, file: string): Promise<RedisCredentials> {
  try {
    const existing = await readRedisCredentialsFile(file);
    if (existing.username === user) return existing;
  } catch {
    // Missing, unreadable or too open: replaced below by a fresh one with mode 0600.
  }
  const creds = { username: user, password: generateRedisPassword() };
  await writeRedisCredentialsFile(file, creds);
  return creds;
}

/** Writes the store's configuration, ACL and credentials files; returns how to start it. */
export async function prepareLockedStateStore(opts: LockedStateStoreOptions): Promise<LockedStateStore> {
  const dir = join(opts.dataDir, 'state-store');
  const credDir = join(dir, 'credentials');
  await mkdir(credDir, { recursive: true, mode: 0o700 });
  // mkdir's mode is only for directories it creates (and is masked): make sure either way.
  await chmod(dir, 0o700);
  await chmod(credDir, 0o700);
  // The AOF and RDB hold the whole state (token hashes, specs, tables): no other local user reads
  // them behind the ACLs' back.
  await mkdir(opts.redisDir, { recursive: true, mode: 0o700 });
  await chmod(opts.redisDir, 0o700);

  const roles: AclUserRules[] = [
    adminAclRules(),
    controlAclRules(opts.keyPrefix),
    routerAclRules(opts.keyPrefix),
    ...opts.cells.map((cell) => cellAclRules(cell, opts.keyPrefix)),
  ];
  const credentialsFile = (user: string): string => join(credDir, `${user}.json`);
  // Redis's ACL file takes no comments: what it is and where it comes from is said in redis.conf.
  // The default user's password is random and written nowhere: see defaultUserAclRules().
  const lines = [aclFileLine(defaultUserAclRules(), randomBytes(32).toString('hex'))];
  for (const role of roles) {
    const creds = await credentialsFor(role.user, credentialsFile(role.user));
    lines.push(aclFileLine(role, creds.password));
  }
  const aclFile = join(dir, 'users.acl');
  await writeSecretFile(aclFile, `${lines.join('\n')}\n`);

  const configFile = join(dir, 'redis.conf');
  await writeSecretFile(
    configFile,
    [
      '# Written by sf up at every start; edits are lost. users.acl is generated from protocol/acl.ts',
      '# with the password hashes of credentials/*.json.',
      `port ${opts.port}`,
      `bind ${opts.host ?? '127.0.0.1'}`,
      `dir ${confValue(opts.redisDir)}`,
      'appendonly yes',
      'save "60 1"',
      `aclfile ${confValue(aclFile)}`,
      // Denied commands are kept for `ACL LOG` (with the user, never a password).
      'acllog-max-len 256',
      '',
    ].join('\n'),
  );
  return {
    serverArgs: [configFile],
    configFile,
    aclFile,
    credentialsFile,
    users: roles.map((r) => r.user),
  };
}
