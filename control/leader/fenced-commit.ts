/**
 * Writes that only the current leader may make. The script refuses the whole write when the
 * leader token counter has moved past the writer's token (a newer leader was elected) or the lock
 * is no longer held by the writer; otherwise it checks optimistic version guards like
 * state/cas-commit.ts and applies the ops. A leader paused by GC or a partition therefore cannot
 * overwrite placements made by its successor (DESIGN.md: "a write with an old token is rejected").
 */
import type { Redis } from 'ioredis';
import { APPLY_CAS_OPS_LUA, encodeCasOps, type CasGuard, type CasOp } from '../state/cas-commit';
import { ErrorCode, SfError } from '../../common';

/** Proof of leadership carried by a write. */
export interface LeaderFence {
  lockKey: string;
  tokenKey: string;
  /** The lock's value while this leader holds it: `${holderId}|${token}`. */
  holder: string;
  token: number;
}

export type FencedResult =
  | { ok: true }
  | { ok: false; reason: 'stale-leader'; currentToken: number }
  | { ok: false; reason: 'version'; key: string; current: number };

// KEYS[1] lock, KEYS[2] token counter, KEYS[3..n+2] guarded version keys; ARGV[1] holder ('' =
// no fence), ARGV[2] token, ARGV[3] n, ARGV[4..n+3] expected versions, ARGV[n+4] ops.
const FENCED_COMMIT_SCRIPT = `
if ARGV[1] ~= '' then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if current > tonumber(ARGV[2]) or redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {0, 1, current}
  end
end
local n = tonumber(ARGV[3])
for i = 1, n do
  local v = tonumber(redis.call('GET', KEYS[2 + i]) or '0')
  if v ~= tonumber(ARGV[3 + i]) then return {0, 2 + i, v} end
end
for i = 1, n do redis.call('INCR', KEYS[2 + i]) end
local ops = cjson.decode(ARGV[n + 4])
${APPLY_CAS_OPS_LUA}
return {1, 0, 0}
`;

interface FencedCapable {
  sfFencedCommit(numKeys: number, ...args: string[]): Promise<[number, number, number]>;
}

const defined = new WeakSet<Redis>();

/** Applies `ops` if `fence` (when given) is still the newest leader and every guard holds. */
export async function fencedCommit(
  redis: Redis,
  fence: LeaderFence | null,
  guards: CasGuard[],
  ops: CasOp[],
): Promise<FencedResult> {
  if (!defined.has(redis)) {
    redis.defineCommand('sfFencedCommit', { lua: FENCED_COMMIT_SCRIPT });
    defined.add(redis);
  }
  const { keys, encoded } = encodeCasOps(
    [fence?.lockKey ?? '{sf}:no-lock', fence?.tokenKey ?? '{sf}:no-token', ...guards.map((g) => g.key)],
    ops,
  );
  const [ok, failed, current] = await (redis as unknown as FencedCapable).sfFencedCommit(
    keys.length,
    ...keys,
    fence?.holder ?? '',
    String(fence?.token ?? 0),
    String(guards.length),
    ...guards.map((g) => String(g.expected)),
    JSON.stringify(encoded),
  );
  if (ok === 1) return { ok: true };
  if (failed === 1) return { ok: false, reason: 'stale-leader', currentToken: current };
  return { ok: false, reason: 'version', key: keys[failed - 1], current };
}

/** The error a deposed leader's write ends in. */
export function staleLeaderError(token: number, currentToken: number): SfError {
  return new SfError(
    ErrorCode.StaleLeader,
    `leader token ${token} is stale (current token ${currentToken}); a newer leader owns placement`,
  );
}

export type FencedPlan<T> = { guards: CasGuard[]; ops: CasOp[]; result: T } | { done: T };

/** Read-compute-commit until the commit wins; a stale fence ends it at once with SF_ERR_STALE_LEADER. */
export async function withFencedRetry<T>(
  redis: Redis,
  fence: LeaderFence | null,
  attempt: () => Promise<FencedPlan<T>>,
  attempts = 50,
): Promise<T> {
  for (let i = 0; i < attempts; i++) {
    const plan = await attempt();
    if ('done' in plan) return plan.done;
    const res = await fencedCommit(redis, fence, plan.guards, plan.ops);
    if (res.ok) return plan.result;
    if (res.reason === 'stale-leader') throw staleLeaderError(fence?.token ?? 0, res.currentToken);
    await new Promise((r) => setTimeout(r, Math.random() * Math.min(2 ** i, 50)));
  }
  throw new SfError(ErrorCode.StoreBusy, 'too many concurrent writers; try again');
}
