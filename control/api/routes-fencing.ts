/**
 * Fencing actions and history of a service, Pacemaker `stonith_admin` style:
 * `POST .../actions/fence` (STONITH of the current primary), `.../actions/unfence`,
 * `.../actions/failover` (`{"to": INSTANCE}` optional; planned switchover when the primary is
 * healthy) and `GET .../fencing` (the history, newest first). Actions run on the leader.
 */
import { fetchWithCa } from '../../common';
import { z } from 'zod';
import { ErrorCode, SfError, errorBody, httpStatusFor, isSfError } from '../../common';
import type { FencingAction, FencingFailoverCoordinator } from '../failover/fencing-coordinator';
import type { CellDirectory } from '../services/cell-directory';
import { serviceView } from '../services/service-view';
import type { ServiceStore } from '../services/service-store';
import type { HttpServer, JsonReply, RequestContext } from './http-server';
import { validateBody } from './routing-schemas';
import { fencingStepView } from './history-views';

export interface FencingApiDeps {
  coordinator: FencingFailoverCoordinator;
  store: ServiceStore;
  directory: CellDirectory;
  /** The CA (PEM) that verifies the leader's HTTPS address. @default the system's */
  leaderCa?: Buffer;
}

const failoverBodySchema = z.object({ to: z.string().min(1).optional() }).strict();

/** Query parameter marking a request a standby forwarded, so it is never forwarded again. */
const FORWARDED = 'forwarded';
/** An action may run a whole switchover (catch-up, a PostgreSQL restart): wait for it. */
const FORWARD_TIMEOUT_MS = 600_000;

/**
 * A standby control forwards an operator action to the leader (whose address the
 * leader publishes next to its lock) as the same sender, and relays the answer, instead of
 * answering 503. A request that was forwarded once is never forwarded again.
 */
async function forwardToLeader(deps: FencingApiDeps, ctx: RequestContext, body: unknown): Promise<JsonReply> {
  if (ctx.query.get(FORWARDED) === '1')
    throw new SfError(ErrorCode.NotLeader, 'forwarded to a control that is no longer the leader; retry');
  const leader = await deps.coordinator.leaderAddress();
  if (!leader)
    throw new SfError(
      ErrorCode.NotLeader,
      'this control is not the leader and no leader has published its address yet; retry (see GET /v3/leader)',
    );
  let res: Response;
  try {
    res = await fetchWithCa(
      `${leader.url}${ctx.path}?${FORWARDED}=1`,
      {
        method: ctx.method,
        headers: {
          'content-type': 'application/json',
          ...(ctx.authorization ? { authorization: ctx.authorization } : {}),
        },
        body: JSON.stringify(body ?? {}),
        signal: AbortSignal.timeout(FORWARD_TIMEOUT_MS),
      },
      deps.leaderCa,
    );
  } catch (err) {
    throw new SfError(ErrorCode.NotLeader, `the leader at ${leader.url} did not answer: ${(err as Error).message}`);
  }
  return { status: res.status, body: await res.json().catch(() => ({})) };
}

export function registerFencingApi(server: HttpServer, deps: FencingApiDeps): void {
  const act = async (
    ctx: RequestContext,
    action: FencingAction,
    name: string,
    target?: string,
    body?: unknown,
  ): Promise<JsonReply> => {
    try {
      await deps.store.mustGet(name);
      if (!deps.coordinator.isLeader()) return await forwardToLeader(deps, ctx, body);
      const res = await deps.coordinator.act(action, name, target);
      return {
        body: {
          operation: res.operation,
          steps: res.steps.map(fencingStepView),
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
    act(ctx, 'fence', ctx.params.name),
  );
  server.route('post', '/v3/service_instances/:name/actions/unfence', 'write', async (ctx) =>
    act(ctx, 'unfence', ctx.params.name),
  );
  server.route('post', '/v3/service_instances/:name/actions/failover', 'write', async (ctx) => {
    // The body is optional: an empty one means "choose the most up-to-date replica".
    const raw = await ctx.body().catch((err: unknown) => {
      if (isSfError(err) && err.code === ErrorCode.InvalidJson && /must be a JSON document/.test(err.message))
        return {};
      throw err;
    });
    const body = validateBody(failoverBodySchema, raw ?? {}, '');
    return act(ctx, 'failover', ctx.params.name, body.to, body);
  });
  server.route('get', '/v3/service_instances/:name/fencing', 'read', async (ctx) => {
    await deps.store.mustGet(ctx.params.name);
    return { body: { resources: (await deps.coordinator.history.list(ctx.params.name)).map(fencingStepView) } };
  });
}
