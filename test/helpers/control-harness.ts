/**
 * Runs a real control (uWS API on a free port) over a real redis-server, with a clock the test
 * can move forward for TTL expiry, and a small JSON client.
 */
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { fetchWithCa } from '../../common/https-fetch';
import { startControlServer, type ControlServer, type ControlServerOptions } from '../../control/control-server';
import { startRedisServer, type RedisServerHandle } from './redis-server';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface ApiResponse<T = unknown> {
  status: number;
  body: T;
}

export interface ControlHarness {
  redis: RedisServerHandle;
  control: ControlServer;
  /** Guid of the `default` router group. */
  defaultGroup: string;
  /** Milliseconds added to the real clock, as seen by control. */
  advance(ms: number): void;
  /** Sends a request; `body` strings are sent as-is (for malformed JSON tests). */
  api<T = unknown>(method: string, path: string, body?: unknown, token?: string | null): Promise<ApiResponse<T>>;
  stop(): Promise<void>;
}

export async function startControlHarness(
  options: ControlServerOptions = {},
  redis?: RedisServerHandle,
): Promise<ControlHarness> {
  const ownRedis = !redis;
  const server = redis ?? (await startRedisServer());
  let offset = 0;
  const control = await startControlServer({
    redisUrl: server.url,
    port: 0,
    adminToken: ADMIN_TOKEN,
    logger: pino({ level: 'silent' }),
    now: () => Date.now() + offset,
    sweepIntervalMs: 60_000,
    ...options,
  });
  // A control serving HTTPS is verified against the CA it was given (docs/tls.md).
  const ca = options.tls?.caFile ? readFileSync(options.tls.caFile) : undefined;
  const api = async <T>(method: string, path: string, body?: unknown, token: string | null = ADMIN_TOKEN) => {
    // As `sf` does: creates answer with the stored records (CF's clients get an empty 201).
    const headers: Record<string, string> = { prefer: 'return=representation' };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetchWithCa(
      `${control.url}${path}`,
      {
        method,
        headers,
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      },
      ca,
    );
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
  };
  const groups = await api<Array<{ guid: string; name: string }>>('GET', '/routing/v1/router_groups');
  const defaultGroup = groups.body.find((g) => g.name === 'default')?.guid as string;
  return {
    redis: server,
    control,
    defaultGroup,
    advance: (ms) => (offset += ms),
    api,
    async stop() {
      await control.close();
      if (ownRedis) await server.stop();
    },
  };
}
