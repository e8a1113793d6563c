/**
 * Token management (`admin` scope): `POST /v3/tokens` returns a new token once, `GET` lists names
 * and scopes, `DELETE /v3/tokens/:name` revokes.
 */
import { z } from 'zod';
import { ErrorCode, SfError } from '../../common';
import type { TokenStore } from '../state/token-store';
import { SCOPES, type Scope } from './auth';
import type { HttpServer } from './http-server';
import { validateBody } from './routing-schemas';

const tokenCreateSchema = z
  .object({
    name: z
      .string({ error: 'must be a string' })
      .regex(/^[A-Za-z0-9_.-]{1,100}$/, 'must be 1-100 of A-Z, a-z, 0-9, _ . -'),
    scopes: z.array(z.enum(SCOPES as [Scope, ...Scope[]], { error: "must be 'read', 'write' or 'admin'" })).min(1),
  })
  .strict();

export function registerTokensApi(server: HttpServer, tokens: TokenStore): void {
  server.route('get', '/v3/tokens', 'admin', async () => ({ body: await tokens.list() }));

  server.route('post', '/v3/tokens', 'admin', async (ctx) => {
    const input = validateBody(tokenCreateSchema, await ctx.body(), '');
    const { token, record } = await tokens.create(input.name, input.scopes);
    return { status: 201, body: { ...record, token } };
  });

  server.route('del', '/v3/tokens/:name', 'admin', async (ctx) => {
    if (!(await tokens.delete(ctx.params.name))) {
      throw new SfError(ErrorCode.NotFound, `no token named '${ctx.params.name}'`, 'name');
    }
    return { status: 204 };
  });
}
