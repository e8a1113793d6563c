/**
 * Control's side of the cell protocol as functions, so placement and fencing speak it the same
 * way: write or remove desired specs (with the notification), send an order and wait for its
 * result, read a cell's actual state.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  cellKeys,
  instanceSpecSchema,
  NOTIFY_DESIRED,
  type ActualInstance,
  type InstanceSpecInput,
  type Order,
  type OrderResult,
} from '../../protocol/cell-protocol';
import { ErrorCode, SfError, schemaError } from '../../common/errors';

/** Validates the spec (naming the field) before it reaches the cell. */
export async function putDesired(redis: Redis, cell: string, spec: InstanceSpecInput): Promise<void> {
  const parsed = instanceSpecSchema.safeParse(spec);
  if (!parsed.success) {
    throw schemaError(parsed.error, ErrorCode.InvalidInstanceSpec, 'spec');
  }
  await redis
    .multi()
    .hset(cellKeys.desired(cell), parsed.data.instanceId, JSON.stringify(parsed.data))
    .publish(cellKeys.notify(cell), NOTIFY_DESIRED)
    .exec();
}

export async function removeDesired(redis: Redis, cell: string, instanceId: string): Promise<void> {
  await redis.multi().hdel(cellKeys.desired(cell), instanceId).publish(cellKeys.notify(cell), NOTIFY_DESIRED).exec();
}

export async function readActual(redis: Redis, cell: string, instanceId: string): Promise<ActualInstance | undefined> {
  const json = await redis.hget(cellKeys.actual(cell), instanceId);
  return json ? (JSON.parse(json) as ActualInstance) : undefined;
}

/** An order without its id: `sendOrder` assigns one. */
export type OrderRequest = Order extends infer O ? (O extends Order ? Omit<O, 'orderId'> : never) : never;

export interface SendOrderOptions {
  /** @default 30000 */
  timeoutMs?: number;
  /** @default 50 */
  pollMs?: number;
  /** @default a random UUID */
  orderId?: string;
}

/**
 * Queues an order for a cell and resolves with its result. Rejects with SF_ERR_ORDER_TIMEOUT
 * when no result arrives in time (the cell may be dead, or died holding the order); the caller
 * retries with a new order id.
 */
export async function sendOrder(
  redis: Redis,
  cell: string,
  request: OrderRequest,
  options: SendOrderOptions = {},
): Promise<OrderResult> {
  const orderId = options.orderId ?? randomUUID();
  const timeoutMs = options.timeoutMs ?? 30_000;
  await redis.lpush(cellKeys.orders(cell), JSON.stringify({ ...request, orderId }));
  const deadline = Date.now() + timeoutMs;
  // Polling one key is cheap and needs no dedicated subscriber connection per caller.
  for (;;) {
    const json = await redis.get(cellKeys.orderResult(orderId));
    if (json) return JSON.parse(json) as OrderResult;
    if (Date.now() > deadline) {
      throw new SfError(
        ErrorCode.OrderTimeout,
        `no result for ${request.type} order ${orderId} from cell ${cell} within ${timeoutMs} ms`,
      );
    }
    await new Promise((r) => setTimeout(r, options.pollMs ?? 50));
  }
}
