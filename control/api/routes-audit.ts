/** `GET /v3/audit[?limit=N]` (admin scope): the newest audit entries of writes, newest first. */
import { invalid } from '../../common';
import type { AuditLog } from './audit-log';
import type { HttpServer } from './http-server';

/** @default 100 entries per `GET /v3/audit` */
export const DEFAULT_AUDIT_PAGE = 100;
const MAX_AUDIT_PAGE = 10_000;

export function registerAuditApi(server: HttpServer, audit: AuditLog): void {
  server.route('get', '/v3/audit', 'admin', async (ctx) => {
    const raw = ctx.query.get('limit');
    const limit = raw === null ? DEFAULT_AUDIT_PAGE : Number(raw);
    if (!/^\d{1,5}$/.test(raw ?? '1') || !Number.isInteger(limit) || limit < 1 || limit > MAX_AUDIT_PAGE) {
      throw invalid('limit', `must be an integer 1-${MAX_AUDIT_PAGE}`);
    }
    return { body: { resources: await audit.list(limit) } };
  });
}
