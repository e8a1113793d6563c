/**
 * Snapshots under `/v3` (docs/volumes.md, Snapshots):
 * - `POST /v3/service_instances/:name/actions/snapshot` `{"keep": N}` takes one (201, when it is
 *   in its stores);
 * - `GET /v3/snapshots[?service=NAME]`, `GET /v3/snapshots/:id`, `DELETE /v3/snapshots/:id`;
 * - `POST /v3/snapshots/:id/actions/restore` `{"name": NEW, ...}` creates a new service from it
 *   (202-style: 201 with the service view; the service starts like any other).
 */
import { z } from 'zod';
import { ErrorCode, SfError, isSfError } from '../../common';
import { admitService, type ServiceAdmissionDeps } from '../services/service-admission';
import { serviceCreateSchema } from '../services/service-schema';
import { serviceView } from '../services/service-view';
import type { SnapshotCoordinator } from '../services/snapshot-coordinator';
import { MAX_SNAPSHOT_KEEP } from '../services/snapshot-keep';
import { snapshotView } from '../services/snapshot-records';
import type { HttpServer, RequestContext } from './http-server';
import { validateBody } from './routing-schemas';

export interface SnapshotsApiDeps extends ServiceAdmissionDeps {
  snapshots: SnapshotCoordinator;
}

const snapshotBodySchema = z
  .object({
    keep: z
      .number({ error: 'must be an integer' })
      .int('must be an integer')
      .min(1, 'must be at least 1')
      .max(MAX_SNAPSHOT_KEEP, `must be at most ${MAX_SNAPSHOT_KEEP}`)
      .optional(),
  })
  .strict();

/** What a restore may set; the engine is the snapshot's, the rest defaults to its service's. */
const restoreBodySchema = z
  .object({
    name: z.unknown(),
    replicas: z.unknown().optional(),
    durability: z.unknown().optional(),
    disk_sync: z.unknown().optional(),
    volume: z.unknown().optional(),
    fencing: z.unknown().optional(),
    router_group: z.unknown().optional(),
  })
  .strict();

/** An optional body: none at all means `{}`. */
async function optionalBody(ctx: RequestContext): Promise<unknown> {
  const raw = await ctx.body().catch((err: unknown) => {
    if (isSfError(err) && err.code === ErrorCode.InvalidJson && /must be a JSON document/.test(err.message)) return {};
    throw err;
  });
  return raw ?? {};
}

export function registerSnapshotsApi(server: HttpServer, deps: SnapshotsApiDeps): void {
  const { snapshots } = deps;

  server.route('post', '/v3/service_instances/:name/actions/snapshot', 'write', async (ctx) => {
    const body = validateBody(snapshotBodySchema, await optionalBody(ctx), '');
    const record = await snapshots.take(ctx.params.name, body.keep !== undefined ? { keep: body.keep } : {});
    return { status: 201, body: snapshotView(record) };
  });

  server.route('get', '/v3/snapshots', 'read', async (ctx) => {
    const service = ctx.query.get('service') ?? undefined;
    return { body: { resources: (await snapshots.records.list(service)).map(snapshotView) } };
  });

  server.route('get', '/v3/snapshots/:id', 'read', async (ctx) => {
    const record = await snapshots.records.get(ctx.params.id);
    if (!record) throw new SfError(ErrorCode.NotFound, `no snapshot '${ctx.params.id}'`, 'id');
    return { body: snapshotView(record) };
  });

  server.route('del', '/v3/snapshots/:id', 'write', async (ctx) => {
    return { body: snapshotView(await snapshots.delete(ctx.params.id)) };
  });

  server.route('post', '/v3/snapshots/:id/actions/restore', 'write', async (ctx) => {
    const raw = validateBody(restoreBodySchema, await ctx.body(), '');
    const record = await snapshots.records.get(ctx.params.id);
    if (!record) throw new SfError(ErrorCode.NotFound, `no snapshot '${ctx.params.id}'`, 'id');
    const req = validateBody(
      serviceCreateSchema,
      {
        engine: record.engine,
        replicas: record.from.replicas,
        durability: record.from.durability,
        ...(record.from.diskSync ? { disk_sync: record.from.diskSync } : {}),
        volume: { size_mb: record.from.sizeMb },
        router_group: record.from.routerGroup,
        ...(record.from.executor ? { executor: record.from.executor } : {}),
        ...Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined)),
      },
      '',
    );
    const cells = await snapshots.holders(record);
    if (!cells.length)
      throw new SfError(
        ErrorCode.SnapshotFailed,
        `no live cell holds snapshot ${record.id} (it is on ${record.cells.join(', ')})`,
        'id',
      );
    const service = await admitService(deps, req, {
      snapshotId: record.id,
      cells,
      description: `snapshot ${record.id} of ${record.service}`,
    });
    await snapshots.restored(service, record);
    return { status: 201, body: serviceView(service, await deps.directory.cellsOf([service])) };
  });
}
