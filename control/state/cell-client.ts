/**
 * Control's side of the cell protocol as functions, so placement and fencing speak it the same
 * way: write or remove desired specs (with the notification), send an order and wait for its
 * result, read a cell's actual state.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  instanceSpecSchema,
  NOTIFY_DESIRED,
  type ActualInstance,
  type InstanceSpec,
  type InstanceSpecInput,
  type Order,
  type OrderResult,
  type KeyLayout,
} from '../../protocol';
import { ErrorCode, SfError, schemaError } from '../../common';
import type { CasOp } from './cas-commit';

/** The spec, validated (naming the field) before it can reach a cell. */
export function validInstanceSpec(spec: InstanceSpecInput): InstanceSpec {
  const parsed = instanceSpecSchema.safeParse(spec);
  if (!parsed.success) throw schemaError(parsed.error, ErrorCode.InvalidInstanceSpec, 'spec');
  return parsed.data;
}

/**
 * The desired-spec write and its notification, as operations for a guarded commit: the one way
 * control tells a cell what to run, whether from convergence, failover or a test.
 */
export function putDesiredOps(keys: KeyLayout, cell: string, spec: InstanceSpecInput): CasOp[] {
  const valid = validInstanceSpec(spec);
  const cellKeys = keys.cell(cell);
  return [
    { cmd: 'HSET', key: cellKeys.desired, field: valid.instanceId, value: JSON.stringify(valid) },
    { cmd: 'PUBLISH', channel: cellKeys.notify, message: NOTIFY_DESIRED },
  ];
}

export function removeDesiredOps(keys: KeyLayout, cell: string, instanceId: string): CasOp[] {
  const cellKeys = keys.cell(cell);
  return [
    { cmd: 'HDEL', key: cellKeys.desired, field: instanceId },
    { cmd: 'PUBLISH', channel: cellKeys.notify, message: NOTIFY_DESIRED },
  ];
}

/** Writes one desired spec outside any guarded commit (tools and tests). */
export async function putDesired(redis: Redis, keys: KeyLayout, cell: string, spec: InstanceSpecInput): Promise<void> {
  await runOps(redis, putDesiredOps(keys, cell, spec));
}

export async function removeDesired(redis: Redis, keys: KeyLayout, cell: string, instanceId: string): Promise<void> {
  await runOps(redis, removeDesiredOps(keys, cell, instanceId));
}

async function runOps(redis: Redis, ops: CasOp[]): Promise<void> {
  const tx = redis.multi();
  for (const op of ops) {
    if (op.cmd === 'HSET') tx.hset(op.key, op.field, op.value);
    else if (op.cmd === 'HDEL') tx.hdel(op.key, op.field);
    else if (op.cmd === 'PUBLISH') tx.publish(op.channel, op.message);
    else throw new Error(`runOps: ${op.cmd} is not a desired-state operation`);
  }
  await tx.exec();
}

export async function readActual(
  redis: Redis,
  keys: KeyLayout,
  cell: string,
  instanceId: string,
): Promise<ActualInstance | undefined> {
  const json = await redis.hget(keys.cell(cell).actual, instanceId);
  return json ? (JSON.parse(json) as ActualInstance) : undefined;
}

/** Queues an order inside a guarded commit; the list is capped so a dead cell cannot grow it forever. */
export function queueOrderOp(keys: KeyLayout, cell: string, order: Order): CasOp {
  return { cmd: 'LPUSH_CAPPED', key: keys.cell(cell).orders, value: JSON.stringify(order), cap: ORDER_QUEUE_CAP };
}

/** @default 10000 orders queued for one cell */
export const ORDER_QUEUE_CAP = 10_000;

/** An order without its id: `sendOrder` assigns one. */
export type OrderRequest = Order extends infer O ? (O extends Order ? Omit<O, 'orderId'> : never) : never;

export interface SendOrderOptions {
  /** @default 30000 */
  timeoutMs?: number;
  /** @default 50 */
  pollMs?: number;
  /** @default a random UUID */
  orderId?: string;
  /**
   * Past `timeoutMs`, wait on while the cell marks the order running (it renews the mark while it
   * executes; the mark lapses within seconds of a cell's death), up to this long from the send.
   * A slow engine under load then answers instead of being taken for a dead one. @default timeoutMs
   */
  runningMaxMs?: number;
  /** Stops waiting (rejects) once aborted: the caller gave up on the order another way. */
  signal?: AbortSignal;
}

/**
 * Queues an order for a cell and resolves with its result. Rejects with SF_ERR_ORDER_TIMEOUT
 * when no result arrives in time (the cell may be dead, or died holding the order); the caller
 * retries with a new order id.
 */
export async function sendOrder(
  redis: Redis,
  keys: KeyLayout,
  cell: string,
  request: OrderRequest,
  options: SendOrderOptions = {},
): Promise<OrderResult> {
  const orderId = options.orderId ?? randomUUID();
  const timeoutMs = options.timeoutMs ?? 30_000;
  await redis.lpush(keys.cell(cell).orders, JSON.stringify({ ...request, orderId }));
  const sentAt = Date.now();
  const deadline = sentAt + timeoutMs;
  const ceiling = sentAt + Math.max(timeoutMs, options.runningMaxMs ?? 0);
  let seenRunning = false;
  // Polling one key is cheap and needs no dedicated subscriber connection per caller.
  for (;;) {
    const json = await redis.get(keys.orderResult(orderId));
    if (json) return JSON.parse(json) as OrderResult;
    if (options.signal?.aborted)
      throw new SfError(
        ErrorCode.OrderTimeout,
        `stopped waiting for ${request.type} order ${orderId} from cell ${cell}`,
      );
    if (Date.now() > deadline) {
      const running = Date.now() <= ceiling && (await redis.exists(keys.orderRunning(orderId))) === 1;
      seenRunning ||= running;
      if (!running) {
        // The result may have landed between the two reads.
        const late = await redis.get(keys.orderResult(orderId));
        if (late) return JSON.parse(late) as OrderResult;
        throw new SfError(
          ErrorCode.OrderTimeout,
          `no result for ${request.type} order ${orderId} from cell ${cell} within ${Date.now() - sentAt} ms${
            seenRunning && Date.now() > ceiling ? ' (the cell was still running it)' : ''
          }`,
        );
      }
    }
    await new Promise((r) => setTimeout(r, options.pollMs ?? 50));
  }
}
