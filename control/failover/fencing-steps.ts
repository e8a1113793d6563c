/**
 * The steps of a fencing sequence as parts with narrow dependencies, one interface per
 * step, so that the order that keeps data safe — validation before everything, route fence before
 * shoot before promote, a failed step stopping the sequence — is proved by unit tests with fakes,
 * and the real parts (orders to cells, lease scripts, route tables) are tested on their own.
 *
 * `FencingSequence` decides *when* each step runs and what goes into the service record; the
 * parts below only *do* one thing each. `cellFencingSteps` is the real implementation.
 */
import type { Redis } from 'ioredis';
import { type HostPort, type OrderResult, fenceLease, type KeyLayout } from '../../protocol';
import type { LeaderFence } from '../leader/fenced-commit';
import type { RouteEmitter } from '../services/route-emitter';
import type { CellSnapshot } from '../services/cell-directory';
import type { ServiceRecord } from '../services/service-types';
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import { sendOrder, type OrderRequest } from '../state/cell-client';
import type { FailoverOptions } from './failover-options';
import { waitForRouters, type RouterAck } from './router-ack';

/** The cells as control sees them (CellDirectory). */
export interface CellView {
  /**
   * Every cell's registration read now, and the reports of the cells `about` names (of every cell
   * when omitted); the other cells' reports may be from an earlier read.
   */
  snapshot(about?: readonly string[]): Promise<Map<string, CellSnapshot>>;
}

/** Step 1: the route reflects the record (a fenced backend is published `fenced`). */
export interface RouteFenceStep {
  /** Writes the route from the record; returns the group's table version now in force. */
  publish(rec: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>, fence: LeaderFence): Promise<number>;
  /** Waits (bounded) until every live router applied `version`; null when the group is unknown. */
  awaitRouters(rec: ServiceRecord, version: number): Promise<RouterAck | null>;
}

/** Step 2a: SIGKILL of the old primary by its cell. Undefined when the cell does not answer. */
export interface ShootStep {
  shoot(cell: string, instanceId: string): Promise<OrderResult | undefined>;
}

/** Step 2b: the epoch floor below which the instance can neither renew a lease nor start as primary. */
export interface LeaseFloorStep {
  raise(instanceId: string, epoch: number): Promise<number>;
}

/** Step 3: a cell cuts itself from its peers (or lifts that cut). */
export interface NetworkFenceStep {
  cut(cell: string, peers: string[]): Promise<OrderResult | undefined>;
  lift(cell: string, peers: string[]): Promise<OrderResult | undefined>;
}

/** Step 4: read replication positions and promote one replica with the new epoch. */
export interface PromoteStep {
  /** The position read now; null when it cannot be read. */
  position(cell: string, instanceId: string): Promise<bigint | null>;
  promote(cell: string, instanceId: string, epoch: number): Promise<OrderResult | undefined>;
}

/** Rejoin and demote: replicas follow the new primary, the old primary becomes one of them. */
export interface RejoinStep {
  /** A running replica follows another primary live. */
  repoint(cell: string, instanceId: string, primary: HostPort): Promise<OrderResult | undefined>;
  /** A clean stop; the instance stays stopped until control raises its generation. */
  stop(cell: string, instanceId: string): Promise<OrderResult | undefined>;
  /**
   * A primary stops taking client writes for `timeoutMs` and answers with its position
   * (`positionValue`); refused with `SF_ERR_ENGINE_UNSUPPORTED` by engines that cannot.
   */
  pauseWrites(cell: string, instanceId: string, timeoutMs: number): Promise<OrderResult | undefined>;
  /**
   * Waits until the instance runs at `generation` or later and its engine says it is a replica
   * (PostgreSQL in recovery, Redis `role:slave`): the demotion is real, not just configured.
   */
  awaitReplica(cell: string, instanceId: string, generation: number, timeoutMs: number): Promise<RejoinResult>;
  /** A write on the primary that must commit (with sync durability: acknowledged) within the bound. */
  commitCheck(cell: string, instanceId: string, timeoutMs: number): Promise<OrderResult | undefined>;
}

export interface RejoinResult {
  ok: boolean;
  message: string;
}

export interface FencingSteps {
  routeFence: RouteFenceStep;
  shoot: ShootStep;
  leaseFloor: LeaseFloorStep;
  networkFence: NetworkFenceStep;
  promote: PromoteStep;
  rejoin: RejoinStep;
}

export interface CellFencingStepsDeps {
  redis: Redis;
  keys: KeyLayout;
  directory: CellView;
  emitter: RouteEmitter;
  groups: RouterGroupStore;
  routes: TcpRouteStore;
  options: Required<FailoverOptions>;
}

/** The real steps: orders through the cell protocol, the lease script, the route emitter. */
export function cellFencingSteps(deps: CellFencingStepsDeps): FencingSteps {
  const order = async (cell: string, request: OrderRequest, timeoutMs?: number): Promise<OrderResult | undefined> => {
    try {
      return await sendOrder(deps.redis, deps.keys, cell, request, {
        timeoutMs: timeoutMs ?? deps.options.orderTimeoutMs,
        pollMs: deps.options.orderPollMs,
        // An order its cell is executing is waited for: a definite answer from a slow cell is
        // worth more than "no answer", which a sequence must treat as "maybe done".
        runningMaxMs: deps.options.orderRunningMaxMs,
      });
    } catch {
      return undefined;
    }
  };
  // Orders that do engine work get longer bounds than a plain order: a PostgreSQL promotion, a
  // clean shutdown or a psql under load take seconds, and the fault-schedule runs saw
  // "promote ... no answer in time" and "could not read the position" with the 2 s default.
  const engineWorkMs = Math.max(deps.options.orderTimeoutMs, 60_000);
  const positionMs = Math.max(deps.options.orderTimeoutMs, 10_000);
  const position = async (cell: string, instanceId: string): Promise<bigint | null> => {
    const res = await order(cell, { type: 'position', instanceId }, positionMs);
    const value = res?.ok ? res.data?.positionValue : undefined;
    return typeof value === 'string' && /^\d+$/.test(value) ? BigInt(value) : null;
  };
  return {
    routeFence: {
      async publish(rec, cells, fence) {
        await deps.emitter.sync(rec, cells, fence.token);
        const group = await deps.groups.get(rec.routerGroupGuid);
        // The version alone: the whole table (10,000 routes at size) was read and parsed for it.
        return group ? (await deps.routes.table(group, { versionOnly: true })).version : 0;
      },
      async awaitRouters(rec, version) {
        const group = await deps.groups.get(rec.routerGroupGuid);
        if (!group) return null;
        return waitForRouters(deps.routes, group, version, deps.options.routerAckTimeoutMs);
      },
    },
    shoot: { shoot: (cell, instanceId) => order(cell, { type: 'fence', instanceId }) },
    leaseFloor: { raise: (instanceId, epoch) => fenceLease(deps.redis, deps.keys, instanceId, epoch) },
    networkFence: {
      cut: (cell, peers) => order(cell, { type: 'fence-network', peers }),
      lift: (cell, peers) => order(cell, { type: 'unfence-network', peers }),
    },
    promote: {
      position,
      promote: (cell, instanceId, epoch) => order(cell, { type: 'promote', instanceId, epoch }, engineWorkMs),
    },
    rejoin: {
      repoint: (cell, instanceId, primary) => order(cell, { type: 'repoint', instanceId, primary }),
      // A clean PostgreSQL shutdown writes a checkpoint and may wait for WAL senders.
      stop: (cell, instanceId) => order(cell, { type: 'stop', instanceId }, engineWorkMs),
      pauseWrites: (cell, instanceId, timeoutMs) =>
        order(cell, { type: 'pause-writes', instanceId, timeoutMs }, positionMs),
      async awaitReplica(cell, instanceId, generation, timeoutMs) {
        const t0 = Date.now();
        let last = 'no report yet';
        while (Date.now() - t0 < timeoutMs) {
          const snap = (await deps.directory.snapshot([cell])).get(cell);
          const actual = snap?.actual.get(instanceId);
          if (actual && actual.generation >= generation) {
            if (actual.state === 'failed')
              return {
                ok: false,
                message: `${instanceId} failed to start as a replica: ${actual.lastError?.message ?? 'exited'}`,
              };
            if (actual.state === 'running') {
              const res = await order(cell, { type: 'position', instanceId }, positionMs);
              if (res?.ok && res.data?.role === 'replica')
                return { ok: true, message: `${instanceId} runs as a replica (read-only) after ${Date.now() - t0} ms` };
              last = res?.ok ? `engine reports role ${String(res.data?.role)}` : (res?.error?.message ?? 'no answer');
            } else last = `state ${actual.state}`;
          } else if (actual) last = `generation ${actual.generation} < ${generation}`;
          await new Promise((r) => setTimeout(r, 100));
        }
        return { ok: false, message: `${instanceId} did not run as a replica within ${timeoutMs} ms (${last})` };
      },
      commitCheck: (cell, instanceId, timeoutMs) =>
        order(cell, { type: 'commit-check', instanceId, timeoutMs }, timeoutMs + deps.options.orderTimeoutMs),
    },
  };
}
