/**
 * The console's client of the control API. The token lives in sessionStorage (gone with the tab)
 * and travels in the Authorization header only, never in a URL.
 */
const TOKEN_KEY = 'sf-token';

export function storedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function api<T>(token: string, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const parsed = text ? (JSON.parse(text) as unknown) : null;
  if (!res.ok) {
    const err = (parsed as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(res.status, err?.code ?? 'SF_ERR_HTTP', err?.message ?? `${method} ${path}: ${res.status}`);
  }
  return parsed as T;
}

/**
 * Follows the route event stream (server-sent events) through fetch, so the token goes in a
 * header: EventSource and browser WebSockets could only put it in the URL.
 */
export async function followEvents(
  token: string,
  onEvent: (type: string, data: string) => void,
  signal: AbortSignal,
): Promise<void> {
  const res = await fetch('/routing/v1/tcp_routes/events', { headers: { authorization: `Bearer ${token}` }, signal });
  if (!res.ok || !res.body) throw new ApiError(res.status, 'SF_ERR_HTTP', `event stream: ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = 'message';
      const data: string[] = [];
      for (const line of frame.split('\n')) {
        if (line.startsWith('event:')) type = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(type, data.join('\n'));
    }
  }
}

export interface Instance {
  id: string;
  cell: string;
  zone: string;
  role: string;
  state: string;
  epoch: number;
  host: string | null;
  port: number | null;
  healthy: boolean | null;
  last_error: { code: string; message: string } | null;
}

export interface Service {
  name: string;
  engine: string;
  replicas: number;
  durability: string;
  volume: { size_mb: number };
  fencing: { policy: string };
  router_group: string;
  port: number;
  status: string;
  message: string | null;
  epoch: number;
  instances: Instance[];
}

export interface Cell {
  name: string;
  alive: boolean;
  zone: string | null;
  capacity_mb: number | null;
  used_mb: number | null;
  instances: Array<{ id: string; service: string; role: string; state: string }>;
}

export interface RouterGroup {
  guid: string;
  name: string;
  reservable_ports: string;
}

export interface RouterHeartbeat {
  routerId: string;
  version: number;
  connected: boolean;
  at: number;
}

export interface RouteRecord {
  port: number;
  backend_id: string;
  backend_ip: string;
  backend_port: number;
  role: string;
  epoch: number;
  state: string;
  router_group_guid: string;
}

export interface FencingStep {
  operation: string;
  trigger: string;
  step: string;
  outcome: string;
  instance_id: string | null;
  epoch: number;
  message: string;
  at: string;
  duration_ms: number | null;
}

export interface RouteStats {
  at: string;
  routers: Array<{
    url: string;
    ok: boolean;
    error: string | null;
    table_version: number | null;
    routes: Array<{
      port: number;
      active: number;
      connections_total: number;
      bytes_in_total: number;
      bytes_out_total: number;
    }>;
  }>;
}
