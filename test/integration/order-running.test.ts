/**
 * An order a cell is executing is waited for past its bound, an order nobody runs is not
 * (docs/cells.md, Orders): `sendOrder` against a real Redis, with the cell's side played by the
 * test (BRPOP the order, keep its running mark, write the result), so each case is exact.
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { sendOrder } from '../../control/state/cell-client';
import { ErrorCode, isSfError } from '../../common';
import { keyLayout, type Order, type OrderResult } from '../../protocol';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';

const KEYS = keyLayout('sf-order-running:');
const CELL = 'cell-x';

/** Takes the next order for CELL off the queue, as a cell's BRPOP does. */
async function popOrder(redis: Redis): Promise<Order> {
  const popped = await redis.brpop(KEYS.cell(CELL).orders, 10);
  if (!popped) throw new Error('no order was queued');
  return JSON.parse(popped[1]) as Order;
}

function resultOf(order: Order): OrderResult {
  return {
    orderId: order.orderId,
    type: order.type,
    cell: CELL,
    ok: true,
    data: { done: true },
    finishedAt: Date.now(),
  };
}

async function timeoutOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isSfError(err) && err.code === ErrorCode.OrderTimeout) return err.message;
    throw err;
  }
  throw new Error('the order did not time out');
}

describe('orders a cell is still running', function () {
  this.timeout(60_000);
  // The lapse case relies on this bound being below its 120 s ceiling.
  let server: RedisServerHandle;
  let control: Redis;
  let cell: Redis;

  before(async () => {
    server = await startRedisServer();
    control = new Redis(server.url);
    cell = new Redis(server.url);
  });
  after(async () => {
    control?.disconnect();
    cell?.disconnect();
    await server?.stop();
  });

  it('a result that comes after the bound while the cell keeps the running mark is returned', async () => {
    // The bound is long enough for the mark to be set first on a loaded machine.
    const sent = sendOrder(
      control,
      KEYS,
      CELL,
      { type: 'position', instanceId: 'i-1' },
      {
        timeoutMs: 2_000,
        pollMs: 10,
        runningMaxMs: 120_000,
      },
    );
    const order = await popOrder(cell);
    const running = KEYS.orderRunning(order.orderId);
    await cell.set(running, CELL, 'PX', 1_000);
    // Renewed while "executing", for well past the sender's bound.
    const renew = setInterval(() => void cell.set(running, CELL, 'PX', 1_000), 200);
    await new Promise((r) => setTimeout(r, 5_000));
    clearInterval(renew);
    await cell.set(KEYS.orderResult(order.orderId), JSON.stringify(resultOf(order)));
    await cell.del(running);
    const result = await sent;
    expect(result).to.include({ orderId: order.orderId, ok: true });
  });

  it('without the running mark the same late result is not waited for', async () => {
    const sent = sendOrder(
      control,
      KEYS,
      CELL,
      { type: 'position', instanceId: 'i-1' },
      {
        timeoutMs: 200,
        pollMs: 10,
        runningMaxMs: 30_000,
      },
    );
    const order = await popOrder(cell);
    const message = await timeoutOf(sent);
    expect(message).to.include(order.orderId);
  });

  it('a mark that lapses (the cell died holding the order) ends the wait', async () => {
    // A ceiling beyond this test's own timeout: only the lapse can end the wait in time.
    const sent = sendOrder(
      control,
      KEYS,
      CELL,
      { type: 'stop', instanceId: 'i-1' },
      {
        timeoutMs: 200,
        pollMs: 10,
        runningMaxMs: 120_000,
      },
    );
    const order = await popOrder(cell);
    // Marked once, never renewed, no result: what a cell SIGKILLed mid-order leaves.
    await cell.set(KEYS.orderRunning(order.orderId), CELL, 'PX', 500);
    await timeoutOf(sent);
    expect(await cell.exists(KEYS.orderResult(order.orderId))).to.equal(0);
  });

  it('an order still running at the ceiling is given up, and the error says it was running', async () => {
    const sent = sendOrder(
      control,
      KEYS,
      CELL,
      { type: 'promote', instanceId: 'i-1', epoch: 2 },
      {
        timeoutMs: 2_000,
        pollMs: 10,
        runningMaxMs: 4_000,
      },
    );
    const order = await popOrder(cell);
    const running = KEYS.orderRunning(order.orderId);
    await cell.set(running, CELL, 'PX', 1_000);
    const renew = setInterval(() => void cell.set(running, CELL, 'PX', 1_000), 200);
    try {
      expect(await timeoutOf(sent)).to.match(/still running/);
    } finally {
      clearInterval(renew);
    }
  });
});
