/**
 * Executes one order from control (cell-protocol.ts `Order`) against the cell's instances and
 * returns its result. Orders are idempotent in effect (fencing a dead instance succeeds, promoting
 * a primary is a no-op for the engine) so that control may safely retry with a new order id.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Order, OrderResult } from '../protocol';
import { ErrorCode, SfError, errorCodeOf, errorMessageOf } from '../common';
import type { NetworkFencer } from './fencer-network';
import { runCommand } from './run-command';
import { recordPromotion, volumePaths } from './instance-volume';
import type { CellInstances } from './cell-instances';
import { pathExists as exists } from './path-exists';
import type { SnapshotStore } from './snapshot-store';
import { dropIncoming, importVolume } from './volume-incoming';
import type { TransferServer } from './volume-transfer';
import type { TransferProgress } from './volume-transfer';

export interface OrderContext {
  cell: string;
  dataDir: string;
  instances: CellInstances;
  fencer: NetworkFencer | undefined;
  snapshots?: SnapshotStore;
  transfer?: TransferServer;
  /** Progress of a copy this cell receives, published as `transfer-progress` events. */
  progress?: (id: string, p: TransferProgress) => void;
}

function needs<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new SfError(ErrorCode.SnapshotFailed, `this cell has no ${what}`);
  return value;
}

export async function executeOrder(order: Order, ctx: OrderContext): Promise<OrderResult> {
  const base = { orderId: order.orderId, type: order.type, cell: ctx.cell };
  try {
    const data = await run(order, ctx);
    return { ...base, ok: true, data, finishedAt: Date.now() };
  } catch (err) {
    return {
      ...base,
      ok: false,
      error: { code: errorCodeOf(err), message: errorMessageOf(err) },
      finishedAt: Date.now(),
    };
  }
}

async function run(order: Order, ctx: OrderContext): Promise<Record<string, unknown>> {
  const { instances } = ctx;
  switch (order.type) {
    case 'promote': {
      const local = instances.running(order.instanceId);
      const current = await instances.recordedEpoch(order.instanceId);
      if (order.epoch < current) {
        throw new SfError(
          ErrorCode.StaleEpoch,
          `promote of ${order.instanceId} with epoch ${order.epoch} refused: it already had epoch ${current}`,
          'epoch',
        );
      }
      await instances.checkEpochFloor({ instanceId: order.instanceId, role: 'primary', epoch: order.epoch });
      await local.engine.promote(local.handle.context);
      await recordPromotion(ctx.dataDir, order.instanceId, order.epoch);
      instances.update(order.instanceId, { role: 'primary', epoch: order.epoch, replicaOf: undefined });
      return { ...(await instances.refreshPosition(order.instanceId)) };
    }
    case 'repoint': {
      const local = instances.running(order.instanceId);
      await local.engine.repoint(local.handle.context, order.primary);
      instances.update(order.instanceId, { role: 'replica', replicaOf: order.primary });
      return { primary: order.primary };
    }
    case 'fence': {
      const wasRunning = await instances.fence(order.instanceId);
      return { wasRunning };
    }
    case 'fence-network':
    case 'unfence-network': {
      if (!ctx.fencer) throw new SfError(ErrorCode.FenceFailed, 'this cell has no network fencer configured');
      if (order.type === 'fence-network') await ctx.fencer.fence(order.peers);
      else await ctx.fencer.unfence(order.peers);
      return { peers: order.peers };
    }
    case 'copy-volume': {
      instances.requireStopped(order.instanceId);
      const { volumeDir } = volumePaths(ctx.dataDir, order.instanceId);
      const target = path.join(order.destination, order.instanceId);
      if (await exists(target))
        throw new SfError(ErrorCode.InvalidInstanceSpec, `${target} already exists`, 'destination');
      await mkdir(order.destination, { recursive: true });
      // cp -a keeps owners and modes, which matter: postgres refuses a data dir that is not
      // 0700 and its own.
      await runCommand('cp', ['-a', volumeDir, target], { timeoutMs: 3_600_000 });
      return { path: target };
    }
    case 'delete-volume': {
      instances.requireStopped(order.instanceId);
      if (instances.isDesired(order.instanceId)) {
        throw new SfError(
          ErrorCode.InstanceRunning,
          `instance ${order.instanceId} is still desired on this cell; remove it from desired first`,
        );
      }
      await rm(volumePaths(ctx.dataDir, order.instanceId).volumeDir, { recursive: true, force: true });
      await instances.forget(order.instanceId);
      return {};
    }
    case 'position':
      return { ...(await instances.refreshPosition(order.instanceId)) };
    case 'measure-volume':
      return { bytes: await instances.measureVolume(order.instanceId) };
    case 'stop': {
      // Not deliberate: it stays desired, and control restarts it by raising the generation.
      const wasRunning = instances.isRunning(order.instanceId);
      await instances.stop(order.instanceId, false);
      // Where the clean stop left the data, when the engine can tell: a switchover that stops an
      // engine unable to pause takes it as the position its target must reach.
      return { wasRunning, ...(await instances.stoppedPosition(order.instanceId)) };
    }
    case 'pause-writes': {
      const local = instances.running(order.instanceId);
      if (!local.engine.pauseWrites)
        throw new SfError(
          ErrorCode.EngineUnsupported,
          `engine ${local.engine.kind} cannot pause writes without a restart`,
          'instanceId',
        );
      await local.engine.pauseWrites(local.handle.context, order.timeoutMs);
      // Read after the pause: the position every acknowledged write is below.
      return { paused: true, ...(await instances.refreshPosition(order.instanceId)) };
    }
    case 'commit-check': {
      const local = instances.running(order.instanceId);
      const reason = local.engine.checkCommit
        ? await local.engine.checkCommit(local.handle.context, order.timeoutMs)
        : null;
      if (reason) throw new SfError(ErrorCode.CommitCheckFailed, `${order.instanceId}: ${reason}`);
      return { committed: true };
    }
    case 'snapshot': {
      const store = needs(ctx.snapshots, 'snapshot store');
      const local = instances.running(order.instanceId);
      const meta = await store.take(
        order.snapshotId,
        local.engine,
        local.handle.context,
        instances.ownerOf(order.instanceId),
      );
      return { ...meta };
    }
    case 'export-snapshot': {
      const store = needs(ctx.snapshots, 'snapshot store');
      const transfer = needs(ctx.transfer, 'transfer port');
      const meta = await store.meta(order.snapshotId);
      if (!meta) throw new SfError(ErrorCode.NotFound, `no snapshot ${order.snapshotId} on cell ${ctx.cell}`);
      transfer.allow(order.token, store.dir(order.snapshotId), order.ttlMs);
      return { bytes: meta.bytes };
    }
    case 'import-snapshot': {
      const store = needs(ctx.snapshots, 'snapshot store');
      const source = { ...order.source, token: order.token, ...(ctx.transfer?.tls ? { tls: ctx.transfer.tls } : {}) };
      const meta = await store.import(order.snapshotId, source, (p) => ctx.progress?.(order.snapshotId, p));
      return { ...meta };
    }
    case 'export-volume': {
      const transfer = needs(ctx.transfer, 'transfer port');
      const { dataDir } = volumePaths(ctx.dataDir, order.instanceId);
      if (!(await exists(dataDir)))
        throw new SfError(ErrorCode.InstanceNotFound, `no volume for instance ${order.instanceId} on cell ${ctx.cell}`);
      transfer.allow(order.token, dataDir, order.ttlMs);
      return {};
    }
    case 'import-volume': {
      if (instances.isRunning(order.instanceId) || (await exists(volumePaths(ctx.dataDir, order.instanceId).metaFile)))
        throw new SfError(
          ErrorCode.InstanceRunning,
          `cell ${ctx.cell} already has a volume for ${order.instanceId}`,
          'instanceId',
        );
      const result = await importVolume(
        ctx.dataDir,
        order.instanceId,
        order.moveId,
        { ...order.source, token: order.token, ...(ctx.transfer?.tls ? { tls: ctx.transfer.tls } : {}) },
        order.final,
        (p) => ctx.progress?.(order.moveId, p),
      );
      return { ...result };
    }
    case 'drop-incoming':
      await dropIncoming(ctx.dataDir, order.instanceId);
      return {};
    case 'delete-snapshot':
      await needs(ctx.snapshots, 'snapshot store').delete(order.snapshotId);
      return {};
    case 'credentials':
      // The result names the version only: secrets never go into order results or events.
      return { version: await instances.applyCredentials(order.instanceId, order.credentials) };
  }
}
