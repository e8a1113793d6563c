/**
 * Optimistic, atomic writes to Redis. A writer reads what it needs together with a version key,
 * computes its change in TypeScript (where the route model and its validation live), then
 * commits through one Lua script that applies every write only if the version key still holds
 * the value it read, and bumps it. Several control processes can therefore write, and sweep
 * expired routes, concurrently: the loser of a race re-reads and retries, nothing is half
 * written, and snapshot, delta and publish happen in one atomic step.
 */
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';

/** A write applied inside the script; keys are named here and passed as KEYS. */
export type CasOp =
  | { cmd: 'HSET'; key: string; field: string; value: string }
  | { cmd: 'HDEL'; key: string; field: string }
  | { cmd: 'ZADD'; key: string; score: number; member: string }
  | { cmd: 'ZREM'; key: string; member: string }
  | { cmd: 'SET'; key: string; value: string }
  | { cmd: 'DEL'; key: string }
  | { cmd: 'LPUSH_CAPPED'; key: string; value: string; cap: number }
  | { cmd: 'PUBLISH'; channel: string; message: string };

export type CasResult = { ok: true } | { ok: false; key: string; current: number };

// KEYS[1..n] are the guarded version keys (n = ARGV[1], expected values in ARGV[2..n+1]); ops
// reference further keys by index. The whitelist keeps the script from ever becoming a general
// command runner.
/**
 * Lua that applies the JSON-encoded ops in `ops` (see encodeCasOps); shared by every commit
 * script so the op format is defined once.
 */
export const APPLY_CAS_OPS_LUA = `
for _, op in ipairs(ops) do
  local c = op[1]
  if c == 'HSET' then redis.call('HSET', KEYS[op[2]], op[3], op[4])
  elseif c == 'HDEL' then redis.call('HDEL', KEYS[op[2]], op[3])
  elseif c == 'ZADD' then redis.call('ZADD', KEYS[op[2]], op[3], op[4])
  elseif c == 'ZREM' then redis.call('ZREM', KEYS[op[2]], op[3])
  elseif c == 'SET' then redis.call('SET', KEYS[op[2]], op[3])
  elseif c == 'DEL' then redis.call('DEL', KEYS[op[2]])
  elseif c == 'LPUSH_CAPPED' then
    redis.call('LPUSH', KEYS[op[2]], op[3])
    redis.call('LTRIM', KEYS[op[2]], 0, op[4] - 1)
  elseif c == 'PUBLISH' then redis.call('PUBLISH', op[2], op[3])
  else return redis.error_reply('unknown op ' .. tostring(c)) end
end
`;

const COMMIT_SCRIPT = `
local n = tonumber(ARGV[1])
for i = 1, n do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current ~= tonumber(ARGV[1 + i]) then return {0, i, current} end
end
for i = 1, n do redis.call('INCR', KEYS[i]) end
local ops = cjson.decode(ARGV[n + 2])
${APPLY_CAS_OPS_LUA}
return {1, 0, 0}
`;

/** A version key that must still hold `expected`; a successful commit sets it to expected + 1. */
export interface CasGuard {
  key: string;
  expected: number;
}

interface CommitCapable {
  sfCasCommit(numKeys: number, ...args: string[]): Promise<[number, number, number]>;
}

const defined = new WeakSet<Redis>();

/**
 * Encodes ops for a commit script: `keys` are the script's leading KEYS (guards, locks); every
 * further key an op names is appended once and referenced by its 1-based index. Shared by every
 * script that applies CasOps, so they all read the same op format.
 */
export function encodeCasOps(
  leadingKeys: string[],
  ops: CasOp[],
): { keys: string[]; encoded: Array<Array<string | number>> } {
  const keys = [...leadingKeys];
  const keyIndex = new Map<string, number>(keys.map((k, i) => [k, i + 1]));
  const indexOf = (key: string): number => {
    let i = keyIndex.get(key);
    if (i === undefined) {
      keys.push(key);
      i = keys.length;
      keyIndex.set(key, i);
    }
    return i;
  };
  const encoded = ops.map((op) => encodeCasOp(op, indexOf));
  return { keys, encoded };
}

/** Commits `ops` if every guard still holds its expected version, bumping each guard by one. */
export async function casCommit(redis: Redis, guards: CasGuard[], ops: CasOp[]): Promise<CasResult> {
  if (!defined.has(redis)) {
    // defineCommand sends EVALSHA and falls back to EVAL once, so the script text is not
    // re-sent with every write.
    redis.defineCommand('sfCasCommit', { lua: COMMIT_SCRIPT });
    defined.add(redis);
  }
  const { keys, encoded } = encodeCasOps(
    guards.map((g) => g.key),
    ops,
  );
  const [ok, failed, current] = await (redis as unknown as CommitCapable).sfCasCommit(
    keys.length,
    ...keys,
    String(guards.length),
    ...guards.map((g) => String(g.expected)),
    JSON.stringify(encoded),
  );
  return ok === 1 ? { ok: true } : { ok: false, key: keys[failed - 1], current };
}

/** The wire form of one op for a commit script: keys become KEYS indexes via `indexOf`. */
export function encodeCasOp(op: CasOp, indexOf: (key: string) => number): Array<string | number> {
  switch (op.cmd) {
    case 'HSET':
      return [op.cmd, indexOf(op.key), op.field, op.value];
    case 'HDEL':
      return [op.cmd, indexOf(op.key), op.field];
    case 'ZADD':
      return [op.cmd, indexOf(op.key), op.score, op.member];
    case 'ZREM':
      return [op.cmd, indexOf(op.key), op.member];
    case 'SET':
      return [op.cmd, indexOf(op.key), op.value];
    case 'DEL':
      return [op.cmd, indexOf(op.key)];
    case 'LPUSH_CAPPED':
      return [op.cmd, indexOf(op.key), op.value, op.cap];
    case 'PUBLISH':
      return [op.cmd, op.channel, op.message];
  }
}

export interface CasRetryOptions {
  /** @default 50 attempts before giving up with SF_ERR_STORE_BUSY */
  attempts?: number;
}

/** What one read-compute pass decided: either writes guarded by versions, or nothing to write. */
export type CasPlan<T> = { guards: CasGuard[]; ops: CasOp[]; result: T } | { done: T };

/**
 * Runs read-compute-commit until the commit wins. `attempt` reads fresh state each time and
 * returns the guards (the versions it read) and ops, or a final value when there is nothing to write.
 */
export async function withCasRetry<T>(
  attempt: () => Promise<CasPlan<T>>,
  redis: Redis,
  options: CasRetryOptions = {},
): Promise<T> {
  const attempts = options.attempts ?? 50;
  for (let i = 0; i < attempts; i++) {
    const plan = await attempt();
    if ('done' in plan) return plan.done;
    const res = await casCommit(redis, plan.guards, plan.ops);
    if (res.ok) return plan.result;
    // Jitter spreads out writers that keep colliding.
    await new Promise((r) => setTimeout(r, Math.random() * Math.min(2 ** i, 50)));
  }
  throw new SfError(ErrorCode.StoreBusy, 'too many concurrent writers; try again');
}
