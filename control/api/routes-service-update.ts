/**
 * `PATCH /v3/service_instances/:name`: the settings a running service may change without being
 * re-created (docs/volumes.md): its disk sync — one guarded commit of the record and of every
 * written desired spec (patched as stored), and each cell applies it to its running engine
 * without a restart (Redis `CONFIG SET appendfsync`, PostgreSQL a reload) — and its snapshot
 * retention (`snapshot_keep`, used by a snapshot request that names no `keep`).
 */
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';
import { defaultDiskSync } from '../../protocol';
import type { CellDirectory } from '../services/cell-directory';
import { serviceUpdateSchema } from '../services/service-schema';
import type { ServiceStore } from '../services/service-store';
import type { ServiceRecord } from '../services/service-types';
import { serviceView } from '../services/service-view';
import { DEFAULT_SNAPSHOT_KEEP } from '../services/snapshot-keep';
import { putDesiredOps } from '../state/cell-client';
import type { CasOp } from '../state/cas-commit';
import type { HttpServer } from './http-server';
import { validateBody } from './routing-schemas';

export interface ServiceUpdateApiDeps {
  store: ServiceStore;
  directory: CellDirectory;
  redis: Redis;
}

export function registerServiceUpdateApi(server: HttpServer, deps: ServiceUpdateApiDeps): void {
  server.route('patch', '/v3/service_instances/:name', 'write', async (ctx) => {
    const req = validateBody(serviceUpdateSchema, await ctx.body(), '');
    const name = ctx.params.name;
    const keys = deps.store.keys;
    const record = await deps.store.change<ServiceRecord>(name, null, async (current) => {
      if (!current) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
      if (current.status === 'deleting')
        throw new SfError(ErrorCode.ActionRefused, `service '${name}' is being deleted`, 'name');
      const before = current.diskSync ?? defaultDiskSync(current.durability, current.engine);
      const next: ServiceRecord = { ...current, updatedAt: Date.now() };
      const extraOps: CasOp[] = [];
      const changes: string[] = [];
      if (req.disk_sync !== undefined) {
        next.diskSync = req.disk_sync;
        changes.push(`disk sync ${before} -> ${req.disk_sync}`);
        for (const inst of next.instances) {
          if (!inst.specWritten) continue;
          const stored = await deps.redis.hget(keys.cell(inst.cell).desired, inst.id);
          if (!stored) continue;
          extraOps.push(...putDesiredOps(keys, inst.cell, { ...JSON.parse(stored), diskSync: req.disk_sync }));
        }
      }
      if (req.snapshot_keep !== undefined) {
        changes.push(`snapshot retention ${current.snapshotKeep ?? DEFAULT_SNAPSHOT_KEEP} -> ${req.snapshot_keep}`);
        next.snapshotKeep = req.snapshot_keep;
      }
      const events = [{ type: 'service-updated' as const, service: name, message: changes.join(', ') }];
      return { change: { record: next, extraOps, events }, result: next };
    });
    return { body: serviceView(record, await deps.directory.snapshot()) };
  });
}
