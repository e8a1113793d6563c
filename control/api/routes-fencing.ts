/**
 * Fencing actions and history of a service (issue 5), Pacemaker `stonith_admin` style:
 * `POST .../actions/fence` (STONITH of the current primary), `.../actions/unfence`,
 * `.../actions/failover` (`{"to": INSTANCE}` optional; planned switchover when the primary is
 * healthy) and `GET .../fencing` (the history, newest first). Actions run on the leader.
 */
import { z } from 'zod';
import { ErrorCode, errorBody, httpStatusFor, isSfError } from '../../common';
import type { FencingAction, FencingFailoverCoordinator } from '../failover/fencing-coordinator';
import type { CellDirectory } from '../services/cell-directory';
import { serviceView } from '../services/service-view';
import type { ServiceStore } from '../services/service-store';
import type { HttpServer, JsonReply } from './http-server';
import { validateBody } from './routing-schemas';

export interface FencingApiDeps {
  coordinator: FencingFailoverCoordinator;
  store: ServiceStore;
  directory: CellDirectory;
}

const failoverBodySchema = z.object({ to: z.string().min(1).optional() }).strict();

export function registerFencingApi(server: HttpServer, deps: FencingApiDeps): void {
  const act = async (action: FencingAction, name: string, target?: string): Promise<JsonReply> => {
    try {
      await deps.store.mustGet(name);
      const res = await deps.coordinator.act(action, name, target);
      return {
        body: {
          operation: res.operation,
          steps: res.steps,
          service: serviceView(res.service, await deps.directory.snapshot()),
        },
      };
    } catch (err) {
      // Failover codes are this module's; the shared table maps the rest.
      const status = httpStatusFor(err);
      if (status === 500) throw err;
      return { status, body: errorBody(err) };
    }
  };

  server.route('post', '/v3/service_instances/:name/actions/fence', 'write', async (ctx) =>
    act('fence', ctx.params.name),
  );
  server.route('post', '/v3/service_instances/:name/actions/unfence', 'write', async (ctx) =>
    act('unfence', ctx.params.name),
  );
  server.route('post', '/v3/service_instances/:name/actions/failover', 'write', async (ctx) => {
    // The body is optional: an empty one means "choose the most up-to-date replica".
    const raw = await ctx.body().catch((err: unknown) => {
      if (isSfError(err) && err.code === ErrorCode.InvalidJson && /must be a JSON document/.test(err.message))
        return {};
      throw err;
    });
    const body = validateBody(failoverBodySchema, raw ?? {}, '');
    return act('failover', ctx.params.name, body.to);
  });
  server.route('get', '/v3/service_instances/:name/fencing', 'read', async (ctx) => {
    await deps.store.mustGet(ctx.params.name);
    return { body: { resources: await deps.coordinator.history.list(ctx.params.name) } };
  });
}
