/**
 * Who may touch which key of the state store: one Redis ACL user per role ("a locked
 * state store"). Every key pattern is derived from the key layout (protocol/keys.ts), so the rules
 * follow the installation's prefix and any later change of a key name. The rules are plain
 * strings in Redis's ACL syntax (https://redis.io/docs/management/security/acl/), without the
 * password, which whoever writes the ACL file adds (cli/state-store-acl.ts).
 *
 * Redis 7 selectors — `(+cmd ~pattern)` — are used wherever a role may run a command on some
 * keys only: a command is allowed when the root permissions or one selector allow both the
 * command and all its keys and channels. That is what keeps, say, a cell's `SET` to its own
 * registration from also allowing `SET` on anyone else's key.
 */
import { ErrorCode, SfError } from '../common';
import { DEFAULT_KEY_PREFIX, keyLayout } from './keys';

/** The Redis user control connects as. */
export const CONTROL_ACL_USER = 'control';
/** The Redis user routers connect as (one user for every router of the installation). */
export const ROUTER_ACL_USER = 'router';
/** The Redis user operators use for repairs; it may do anything (the `default` user is off). */
export const ADMIN_ACL_USER = 'admin';

/** The Redis user of cell `name`. */
export function cellAclUser(name: string): string {
  return `cell-${name}`;
}

/** One user's ACL rules, password excluded. */
export interface AclUserRules {
  user: string;
  rules: string[];
}

/**
 * What every role's connection needs whatever its keys: the handshake ioredis performs (HELLO,
 * AUTH, CLIENT SETNAME, SELECT, and INFO for its ready check) and transactions, whose queued
 * commands Redis checks one by one against the same rules.
 */
const CONNECTION_COMMANDS = [
  '+ping',
  '+echo',
  '+hello',
  '+auth',
  '+quit',
  '+reset',
  '+select',
  '+info',
  '+client|setname',
  '+client|getname',
  '+client|id',
  '+client|info',
  '+multi',
  '+exec',
  '+discard',
  '+watch',
  '+unwatch',
];

/** Stands for "any name" while deriving a pattern from the key layout; never part of a key. */
const ANY = '\u0000';

/** Escapes Redis glob metacharacters so a literal key name matches only itself. */
export function escapeAclGlob(literal: string): string {
  return literal.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

/** A layout key with `ANY` where a name goes, as a Redis glob: literal parts escaped, `ANY` -> `*`. */
function pattern(key: string): string {
  return escapeAclGlob(key).split(ANY).join('*');
}

/**
 * The ACL file is split on spaces and a selector on parentheses, so a prefix holding either
 * could not be expressed; such prefixes are refused rather than silently widened.
 */
function checkPrefix(prefix: string): void {
  if (/[\s()"'#\p{Cc}]/u.test(prefix))
    throw new SfError(
      ErrorCode.InvalidOption,
      `key prefix '${prefix}' cannot be written into Redis ACL rules: use letters, digits and : _ . -`,
      'keyPrefix',
    );
}

/** Keys control names outside the prefix; see controlAclRules. */
const UNPREFIXED_CONTROL_KEYS = ['{sf}:no-lock', '{sf}:no-token'];

/** Control writes everything under the prefix; nothing outside it, and no server administration. */
export function controlAclRules(prefix: string = DEFAULT_KEY_PREFIX): AclUserRules {
  checkPrefix(prefix);
  const all = `${escapeAclGlob(prefix)}*`;
  return {
    user: CONTROL_ACL_USER,
    // -@admin/-@dangerous take CONFIG, ACL, SHUTDOWN, FLUSHALL, KEYS, MONITOR, DEBUG...: control
    // never needs them, and a leaked control password should not reconfigure the store.
    rules: [
      'resetkeys',
      'resetchannels',
      '-@all',
      '+@all',
      '-@admin',
      '-@dangerous',
      '+info',
      `~${all}`,
      `&${all}`,
      // control/leader/fenced-commit.ts names these two placeholders (never read or written)
      // as script keys when a commit needs no leader fence; EVAL asks access to every named key.
      ...UNPREFIXED_CONTROL_KEYS.map((k) => `~${escapeAclGlob(k)}`),
    ],
  };
}

/**
 * A router reads the tables of every router group (version, snapshot, deltas), subscribes to their
 * change channels and writes router heartbeats; it cannot write a route or a version.
 */
export function routerAclRules(prefix: string = DEFAULT_KEY_PREFIX): AclUserRules {
  checkPrefix(prefix);
  const g = keyLayout(prefix).group(ANY);
  return {
    user: ROUTER_ACL_USER,
    rules: [
      'resetkeys',
      'resetchannels',
      '-@all',
      ...CONNECTION_COMMANDS,
      // Root permissions: read commands on the table keys only (%R: read, never write).
      '+get',
      '+hvals',
      '+hgetall',
      '+hget',
      '+hlen',
      '+lrange',
      '+llen',
      '+exists',
      '+type',
      '+pttl',
      `%R~${pattern(g.version)}`,
      `%R~${pattern(g.routes)}`,
      `%R~${pattern(g.deltas)}`,
      // Heartbeats: SET with PX, DEL on stop; nothing else on those keys.
      `(+set +del +pexpire ~${pattern(g.routerHeartbeatPrefix + ANY)})`,
      `(+subscribe +unsubscribe &${pattern(g.channel)})`,
    ],
  };
}

/**
 * Globs matching `lease(id)` for every instance id but never `leaseFloor(id)`. A floor key is the
 * lease key plus a suffix (`:floor`); Redis globs have no "does not end with", so the set is
 * spelled as "ends with a character other than the suffix's last, or with the suffix's last j
 * characters preceded by anything but the character before them". The literal part stops one
 * character short of the instance id so that one-character ids match too.
 */
function leaseNotFloorPatterns(prefix: string): string[] {
  const layout = keyLayout(prefix);
  const lease = layout.lease(ANY);
  const floor = layout.leaseFloor(ANY);
  if (!floor.startsWith(lease) || lease.indexOf(ANY) !== lease.length - 1)
    throw new Error('protocol/acl.ts assumes leaseFloor(id) = lease(id) + suffix; update leaseNotFloorPatterns');
  const base = lease.slice(0, -2); // the literal part minus its last character
  const suffix = floor.slice(lease.length);
  const out: string[] = [];
  for (let j = 0; j < suffix.length; j++) {
    const notThis = suffix[suffix.length - 1 - j] as string;
    const tail = suffix.slice(suffix.length - j);
    out.push(`${escapeAclGlob(base)}*[^${escapeAclGlob(notThis)}]${escapeAclGlob(tail)}`);
  }
  return out;
}

/**
 * A cell reads its desired state and writes its own registration, actual state and order results;
 * it pops its own orders, adds itself to the cell set, renews leases and reads their floors,
 * publishes on the cell-event channel and listens on its own notify channel. It cannot write
 * desired state (its own or another cell's), another cell's keys, tokens, routes or floors.
 *
 * What a cell can still touch beyond its own instances: leases are named by instance, not by cell,
 * and an instance moves between cells, so any cell may claim (or withdraw, via DEL) any
 * instance's lease claim; the floors control raises when it fences stay out of its reach, so a deposed
 * primary never gets its lease back. Any order result (`order:*`, write only: it cannot read
 * them) and any member of the cell set (`SADD` only) may be written, since order ids are
 * random and the set is discovery, liveness being each cell's own registration key.
 */
export function cellAclRules(cellName: string, prefix: string = DEFAULT_KEY_PREFIX): AclUserRules {
  checkPrefix(prefix);
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(cellName))
    throw new SfError(ErrorCode.InvalidOption, `cell name '${cellName}' is not a valid cell name`, 'name');
  const layout = keyLayout(prefix);
  const own = layout.cell(cellName);
  const lit = escapeAclGlob;
  const leases = leaseNotFloorPatterns(prefix).map((p) => `~${p}`);
  return {
    user: cellAclUser(cellName),
    rules: [
      'resetkeys',
      'resetchannels',
      '-@all',
      ...CONNECTION_COMMANDS,
      `(+set +del +get +exists +pexpire +pttl ~${lit(own.registration)})`,
      `(+hgetall +hget +hkeys +hlen +hscan %R~${lit(own.desired)})`,
      `(+hset +hdel +hgetall +hget +hkeys +hlen +del ~${lit(own.actual)})`,
      `(+brpop +rpop +llen ~${lit(own.orders)})`,
      `(+sadd +sismember ~${lit(layout.cells)})`,
      `(+set %W~${pattern(layout.orderResult(ANY))})`,
      // Leases: EVAL of the claim and release scripts names the floor as a key, and Redis asks read and write
      // access to every key an EVAL names; the commands the script then runs are checked one by
      // one below, where floors are readable only.
      `(+eval +evalsha ~${pattern(layout.lease(ANY))})`,
      // The heartbeat script names the cell's registration, the cell set and its primaries' floors.
      `(+eval +evalsha ~${lit(own.registration)} ~${lit(layout.cells)} ~${pattern(layout.lease(ANY))})`,
      `(+get %R~${pattern(layout.leaseFloor(ANY))})`,
      `(+hset +hget +hmget +hgetall +persist +del +pexpire +pttl ${leases.join(' ')})`,
      `(+publish &${lit(layout.cellEvents)})`,
      `(+subscribe +unsubscribe &${lit(own.notify)})`,
    ],
  };
}

/** The operators' user: everything, for repairs with `redis-cli --user admin`. */
export function adminAclRules(): AclUserRules {
  return { user: ADMIN_ACL_USER, rules: ['resetkeys', 'resetchannels', '~*', '&*', '+@all'] };
}

/**
 * The built-in user every unauthenticated connection is. It needs a password, so such a
 * connection gets NOAUTH; the caller gives it one nobody knows (a random hash), so nobody can
 * log in as it either. It must keep every permission all the same: Redis 7.0 replays the
 * append-only file as the `default` user and checks the ACL at each EXEC, so a `default` user
 * that is `off` or stripped of rights makes every MULTI/EXEC and every script's effects fail
 * on replay — the store would silently lose almost all of control's writes at each restart.
 */
export function defaultUserAclRules(): AclUserRules {
  return { user: 'default', rules: ['resetkeys', 'resetchannels', '~*', '&*', '+@all'] };
}
