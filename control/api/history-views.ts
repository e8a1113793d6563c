/**
 * What `/v3` answers for service events and fencing steps. The stored entries keep their
 * TypeScript field names (they are written by several modules and read back by the state
 * keeper); the API speaks snake_case with ISO times like the rest of `/v3` (`created_at`,
 * `router_group`), as Cloud Foundry's v3 API does.
 */
import type { FencingStep } from '../failover/fencing-history';
import type { ServiceEvent } from '../services/service-types';

export interface ServiceEventView {
  type: ServiceEvent['type'];
  service: string;
  instance_id: string | null;
  cell: string | null;
  message: string;
  at: string;
  leader_token: number;
}

export interface FencingStepView {
  operation: string;
  trigger: string;
  service: string;
  step: FencingStep['step'];
  outcome: FencingStep['outcome'];
  instance_id: string | null;
  cell: string | null;
  epoch: number;
  message: string;
  at: string;
  leader_token: number;
  /** Since the operation's previous step (or its start); null in entries older than this field. */
  duration_ms: number | null;
}

export function serviceEventView(e: ServiceEvent): ServiceEventView {
  return {
    type: e.type,
    service: e.service,
    instance_id: e.instanceId ?? null,
    cell: e.cell ?? null,
    message: e.message,
    at: new Date(e.at).toISOString(),
    leader_token: e.leaderToken,
  };
}

export function fencingStepView(s: FencingStep): FencingStepView {
  return {
    operation: s.operation,
    trigger: s.trigger,
    service: s.service,
    step: s.step,
    outcome: s.outcome,
    instance_id: s.instanceId ?? null,
    cell: s.cell ?? null,
    epoch: s.epoch,
    message: s.message,
    at: new Date(s.at).toISOString(),
    leader_token: s.leaderToken,
    duration_ms: s.durationMs ?? null,
  };
}
