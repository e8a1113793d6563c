/** Leadership: the Redis lock with fencing tokens, and writes only the current leader can make. */
export { LeaderElector, DEFAULT_LEADER_ELECTOR_OPTIONS, type LeaderElectorOptions } from './leader-elector';
export {
  fencedCommit,
  withFencedRetry,
  staleLeaderError,
  type LeaderFence,
  type FencedResult,
  type FencedPlan,
} from './fenced-commit';
