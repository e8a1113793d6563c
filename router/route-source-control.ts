/**
 * `sf router --control URL`: asks control where its Redis is (`GET /v3/info`, read scope), then
 * subscribes there on its own. Control is asked once at start; after that the router depends
 * only on Redis, so a control restart never disturbs routing.
 */
import { ErrorCode, SfError } from '../common';
import { RedisRouteSource, type RedisRouteSourceOptions } from './route-source-redis';

export interface ControlInfo {
  redis_url: string;
  key_prefix: string;
}

export async function fetchControlInfo(
  controlUrl: string,
  token: string | null,
  timeoutMs = 5_000,
): Promise<ControlInfo> {
  const url = `${controlUrl.replace(/\/+$/, '')}/v3/info`;
  let res: Response;
  try {
    res = await fetch(url, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    throw new SfError(
      ErrorCode.RouteSource,
      `cannot reach control at ${controlUrl}: ${(err as Error).message}`,
      'control',
    );
  }
  const body = (await res.json().catch(() => null)) as (Partial<ControlInfo> & { error?: { message?: string } }) | null;
  if (!res.ok || typeof body?.redis_url !== 'string') {
    const reason = body?.error?.message ?? `HTTP ${res.status}`;
    throw new SfError(ErrorCode.RouteSource, `control at ${controlUrl} gave no Redis URL: ${reason}`, 'control');
  }
  return { redis_url: body.redis_url, key_prefix: body.key_prefix ?? 'sf:' };
}

/** A RedisRouteSource pointed at the Redis that control at `controlUrl` uses. */
export async function routeSourceFromControl(
  controlUrl: string,
  token: string | null,
  options: Omit<RedisRouteSourceOptions, 'redisUrl'>,
): Promise<RedisRouteSource> {
  const info = await fetchControlInfo(controlUrl, token);
  return new RedisRouteSource({ keyPrefix: info.key_prefix, ...options, redisUrl: info.redis_url });
}
