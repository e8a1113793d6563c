/**
 * Cloud Foundry's error body for the routing API (routing-api `Error`: `{"name", "message"}`) and
 * its status codes, so CF's Go client (`transformResponseError`) reads our refusals as its own.
 * Our registry body rides along as the extra member `error`, so our CLI and tests keep their code
 * and field.
 */
import { ErrorCode, type ErrorBody } from '../../common';

/** Where the routing API lives; errors under it take CF's shape. */
export const CF_ROUTING_PATH_PREFIX = '/routing/v1/';

/** The `name` values routing-api answers with (its errors.go). */
export type CfErrorName =
  'ProcessRequestError' | 'ResourceNotFoundError' | 'UnauthorizedError' | 'DBCommunicationError' | 'ResponseError';

export interface CfErrorBody extends ErrorBody {
  name: CfErrorName;
  message: string;
}

/** CF's message for a token without the needed scope (handlers/errors.go rewrites it so). */
const NOT_AUTHORIZED = 'You are not authorized to perform the requested action';

/**
 * CF's status and body for one of our errors. CF answers a missing scope with 401, any request it
 * cannot process with 400 `Cannot process request: …`, a missing resource with 404 and a store
 * problem with 503. Refusals CF does not make at all (our stricter checks: 409, 422, 413, 414,
 * 431) keep their status and take the name CF gives a request it cannot process.
 */
export function cfErrorReply(status: number, body: ErrorBody): { status: number; body: CfErrorBody } {
  const { code, message } = body.error;
  if (code === ErrorCode.Forbidden)
    return { status: 401, body: { name: 'UnauthorizedError', message: NOT_AUTHORIZED, ...body } };
  if (status === 401) return { status, body: { name: 'UnauthorizedError', message, ...body } };
  if (status === 404) return { status, body: { name: 'ResourceNotFoundError', message, ...body } };
  if (status >= 500 && status !== 500) return { status, body: { name: 'DBCommunicationError', message, ...body } };
  if (status === 500) return { status, body: { name: 'ResponseError', message, ...body } };
  return { status, body: { name: 'ProcessRequestError', message: `Cannot process request: ${message}`, ...body } };
}
