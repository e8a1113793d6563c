/**
 * Volume moves (docs/volumes.md, Moving a volume): `POST /v3/service_instances/:name/actions/move`
 * `{"to": CELL, "instance": ID, "method": "catch-up" | "copy"}` validates and starts one (202 with its record; the instance
 * defaults to the primary), `GET /v3/moves/:id` and `GET /v3/moves[?service=NAME]` follow it:
 * state, phase, bytes copied, rate, ETA and, once done, how long writes were refused.
 */
import { z } from 'zod';
import { ErrorCode, SfError } from '../../common';
import { moveView, type VolumeMover } from '../services/volume-mover';
import type { HttpServer } from './http-server';
import { validateBody } from './routing-schemas';

const moveBodySchema = z
  .object({
    to: z.string({ error: 'must be a cell name' }).min(1, 'must be a cell name'),
    instance: z.string().min(1, 'must not be empty').optional(),
    method: z.enum(['catch-up', 'copy'], { error: "must be 'catch-up' or 'copy'" }).optional(),
  })
  .strict();

export function registerMovesApi(server: HttpServer, mover: VolumeMover): void {
  server.route('post', '/v3/service_instances/:name/actions/move', 'write', async (ctx) => {
    const body = validateBody(moveBodySchema, await ctx.body(), '');
    const move = await mover.start(ctx.params.name, body.to, body.instance, body.method ? { method: body.method } : {});
    return { status: 202, body: moveView(move) };
  });

  server.route('get', '/v3/moves', 'read', async (ctx) => {
    const service = ctx.query.get('service') ?? undefined;
    return { body: { resources: (await mover.list(service)).map(moveView) } };
  });

  server.route('get', '/v3/moves/:id', 'read', async (ctx) => {
    const move = await mover.get(ctx.params.id);
    if (!move) throw new SfError(ErrorCode.NotFound, `no move '${ctx.params.id}'`, 'id');
    return { body: moveView(move) };
  });
}
