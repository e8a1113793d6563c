/**
 * The bearer-token check of the endpoints that take one fixed token (a router's admin endpoint, a
 * cell's metrics): digests are compared, so the time taken tells nothing about the token.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ErrorCode } from './errors';

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** True when `authorization` is `Bearer <token>`. */
export function bearerAccepted(authorization: string | undefined, token: string): boolean {
  const m = /^Bearer +(\S+) *$/i.exec(authorization ?? '');
  return m !== null && timingSafeEqual(digest(m[1]!), digest(token));
}

/** The 401 body such an endpoint answers, naming the header. */
export function bearerRequiredBody(what: string, doc: string): string {
  return JSON.stringify({
    error: {
      code: ErrorCode.Unauthorized,
      message: `${what} needs authorization: Bearer TOKEN (${doc})`,
      field: 'authorization',
    },
  });
}
