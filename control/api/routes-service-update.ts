/**
 * `PATCH /v3/service_instances/:name`: the settings a running service may change without being
 * re-created (docs/volumes.md): its disk sync — one guarded commit of the record and of every
 * written desired spec (patched as stored), and each cell applies it to its running engine
 * without a restart (Redis `CONFIG SET appendfsync`, PostgreSQL a reload) — and its snapshot
 * retention (`snapshot_keep`, used by a snapshot request that names no `keep`) — and its TLS
 * policy (`tls`, docs/tls.md): the route follows at once, engines without a restart where that is
 * possible; a change that would need one is refused before anything changes.
 */
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';
import { defaultDiskSync, type InstanceSpecInput } from '../../protocol';
import type { CellDirectory } from '../services/cell-directory';
import { serviceUpdateSchema } from '../services/service-schema';
import type { ServiceStore } from '../services/service-store';
import type { ServiceRecord } from '../services/service-types';
import { serviceView } from '../services/service-view';
import { DEFAULT_SNAPSHOT_KEEP } from '../services/snapshot-keep';
import { putDesiredOps } from '../state/cell-client';
import type { CasOp } from '../state/cas-commit';
import type { HttpServer } from './http-server';
import { tlsPolicyChange } from '../services/service-tls-change';
import { validateBody } from './routing-schemas';

export interface ServiceUpdateApiDeps {
  store: ServiceStore;
  directory: CellDirectory;
  redis: Redis;
  /** Whether control can issue certificates, and how it issues a service's (service-admission.ts). */
  tls?: {
    available: boolean;
    certificate?: (service: string) => Promise<{ certFile: string; keyFile: string }>;
  };
}

export function registerServiceUpdateApi(server: HttpServer, deps: ServiceUpdateApiDeps): void {
  server.route('patch', '/v3/service_instances/:name', 'write', async (ctx) => {
    const req = validateBody(serviceUpdateSchema, await ctx.body(), '');
    const name = ctx.params.name;
    const keys = deps.store.keys;
    // Checked before the change takes its turn; the certificate is issued outside it too.
    const pre = await deps.store.get(name);
    const tlsCertificate =
      req.tls !== undefined && pre
        ? await tlsPolicyChange(pre, req.tls, deps.tls?.available === true, deps.tls?.certificate)
        : undefined;
    const record = await deps.store.change<ServiceRecord>(name, null, async (current) => {
      if (!current) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
      if (current.status === 'deleting')
        throw new SfError(ErrorCode.ActionRefused, `service '${name}' is being deleted`, 'name');
      const before = current.diskSync ?? defaultDiskSync(current.durability, current.engine);
      const next: ServiceRecord = { ...current, updatedAt: Date.now() };
      const extraOps: CasOp[] = [];
      const changes: string[] = [];
      // Fields of every written desired spec to set (undefined: to remove), patched as stored.
      const specPatch: Record<string, unknown> = {};
      if (req.disk_sync !== undefined) {
        next.diskSync = req.disk_sync;
        changes.push(`disk sync ${before} -> ${req.disk_sync}`);
        specPatch.diskSync = req.disk_sync;
      }
      if (req.snapshot_keep !== undefined) {
        changes.push(`snapshot retention ${current.snapshotKeep ?? DEFAULT_SNAPSHOT_KEEP} -> ${req.snapshot_keep}`);
        next.snapshotKeep = req.snapshot_keep;
      }
      if (req.tls !== undefined && req.tls !== (current.tls ?? 'off')) {
        // Checked again against the record the change applies to.
        await tlsPolicyChange(current, req.tls, deps.tls?.available === true);
        changes.push(`tls ${current.tls ?? 'off'} -> ${req.tls}`);
        next.tls = req.tls;
        if (current.engine === 'postgres') {
          if (req.tls === 'off') delete next.tlsCertificate;
          else if (tlsCertificate) next.tlsCertificate = tlsCertificate;
        }
        // Each cell applies it to its running engine (PostgreSQL: a reload with the other
        // certificate), and reports the engine's TLS so the route follows.
        specPatch.tls = req.tls !== 'off' ? true : undefined;
        specPatch.tlsOptional = req.tls === 'optional' ? true : undefined;
        specPatch.tlsCertificate = req.tls !== 'off' ? next.tlsCertificate : undefined;
      }
      if (Object.keys(specPatch).length)
        for (const inst of next.instances) {
          if (!inst.specWritten) continue;
          const stored = await deps.redis.hget(keys.cell(inst.cell).desired, inst.id);
          if (!stored) continue;
          const spec = { ...(JSON.parse(stored) as Record<string, unknown>), ...specPatch };
          for (const k of Object.keys(specPatch)) if (spec[k] === undefined) delete spec[k];
          extraOps.push(...putDesiredOps(keys, inst.cell, spec as unknown as InstanceSpecInput));
        }
      const events = [{ type: 'service-updated' as const, service: name, message: changes.join(', ') }];
      return { change: { record: next, extraOps, events }, result: next };
    });
    return { body: serviceView(record, await deps.directory.snapshot()) };
  });
}
