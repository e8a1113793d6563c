/**
 * The per-service fencing history (`GET /v3/service_instances/:name/fencing`, `sf fencing NAME`),
 * in the spirit of Pacemaker's `stonith_admin --history`: every step of every fencing operation
 * with its outcome. Each entry is also a `fencing` service event, and both are written in one
 * leader-fenced commit, so a deposed leader cannot add to the history either.
 */
import type { Redis } from 'ioredis';
import { fencedCommit, type LeaderFence } from '../leader/fenced-commit';
import type { CasOp } from '../state/cas-commit';
import type { KeyLayout } from '../../protocol';
import type { ServiceEvent } from '../services/service-types';

export type FencingStepName =
  | 'route-fence'
  | 'router-ack'
  | 'shoot'
  | 'lease-floor'
  | 'network-fence'
  | 'choose'
  | 'pause'
  | 'catch-up'
  | 'stop'
  | 'promote'
  | 'repoint'
  | 'rejoin'
  | 'retire'
  | 'commit-check'
  | 'publish'
  | 'unfence'
  | 'abort'
  | 'restart-in-place'
  | 'check';

/** `degraded`: done, but not everywhere (a router did not confirm in time, a cell did not answer). */
export type FencingOutcome = 'ok' | 'degraded' | 'skipped' | 'failed';

export interface FencingStep {
  /** Groups the steps of one operation. */
  operation: string;
  /** What started it: `instance-failed`, `cell-dead`, `lease-lost`, `operator-fence`, `switchover`... */
  trigger: string;
  service: string;
  step: FencingStepName;
  outcome: FencingOutcome;
  instanceId?: string;
  cell?: string;
  epoch: number;
  message: string;
  at: number;
  leaderToken: number;
  /** How long the step took: since the operation's previous step, or since it started. */
  durationMs?: number;
}

export type FencingStepInput = Omit<FencingStep, 'at' | 'leaderToken' | 'service' | 'operation' | 'trigger'>;

export class FencingHistory {
  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
    private readonly limit: number,
  ) {}

  /** Appends one step; false when the fence is stale (the entry is then dropped with the write). */
  async record(
    fence: LeaderFence,
    op: { operation: string; trigger: string; service: string },
    input: FencingStepInput,
  ): Promise<FencingStep> {
    const entry: FencingStep = { ...op, ...input, at: Date.now(), leaderToken: fence.token };
    const event: ServiceEvent = {
      type: 'fencing',
      service: op.service,
      instanceId: input.instanceId,
      cell: input.cell,
      message: `${input.step} ${input.outcome}: ${input.message}`,
      at: entry.at,
      leaderToken: fence.token,
    };
    const eventText = JSON.stringify(event);
    const ops: CasOp[] = [
      { cmd: 'LPUSH_CAPPED', key: this.keys.fencingHistory(op.service), value: JSON.stringify(entry), cap: this.limit },
      { cmd: 'LPUSH_CAPPED', key: this.keys.serviceEventLog, value: eventText, cap: 500 },
      { cmd: 'PUBLISH', channel: this.keys.serviceEvents, message: eventText },
    ];
    await fencedCommit(this.redis, fence, [], ops);
    return entry;
  }

  /** Newest first. */
  async list(service: string, limit = this.limit): Promise<FencingStep[]> {
    const texts = await this.redis.lrange(this.keys.fencingHistory(service), 0, limit - 1);
    return texts.map((t) => JSON.parse(t) as FencingStep);
  }
}
