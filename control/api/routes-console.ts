/**
 * The web console at `/ui/` (built into `dist/console` by `npm run build`) and what it reads
 * besides the API itself: `GET /v3/route_stats`, each router's per-route counters, fetched by
 * control from the routers' admin endpoints (the browser reaches control only; its security
 * policy allows no other origin).
 *
 * The files need no token — they hold no data; every request the page makes does. The page keeps
 * the token in sessionStorage and sends it as a header, never in a URL.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, SfError } from '../../common';
import type { HttpServer, JsonReply } from './http-server';

/** Where the bundle lands next to the compiled control (`dist/control/api` → `dist/console`). */
export const DEFAULT_CONSOLE_DIR = path.join(__dirname, '..', '..', 'console');

const FILES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'app.css': 'text/css; charset=utf-8',
};

/**
 * Scripts, styles and connections from this origin only; no inline script, no framing, no
 * referrer, so a token typed into the page has nowhere to leak to.
 */
export const CONSOLE_SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=()',
  'cache-control': 'no-store',
};

export interface RouteStat {
  port: number;
  active: number;
  connections_total: number;
  bytes_in_total: number;
  bytes_out_total: number;
}

export interface RouterStats {
  url: string;
  ok: boolean;
  error: string | null;
  table_version: number | null;
  routes: RouteStat[];
}

/** How long control waits for a router's `/metrics`. */
const ROUTER_SCRAPE_TIMEOUT_MS = 2_000;

const SAMPLE = /^(sf_router_[a-z_]+)\{([^}]*)\} ([0-9.e+-]+)$/;

/** The per-port counters of one router's Prometheus text (SNI routes of a port summed). */
export function parseRouterMetrics(text: string): { tableVersion: number | null; routes: RouteStat[] } {
  const byPort = new Map<number, RouteStat>();
  let tableVersion: number | null = null;
  const field: Record<string, keyof Omit<RouteStat, 'port'>> = {
    sf_router_active_connections: 'active',
    sf_router_connections_total: 'connections_total',
    sf_router_bytes_in_total: 'bytes_in_total',
    sf_router_bytes_out_total: 'bytes_out_total',
  };
  for (const line of text.split('\n')) {
    if (line.startsWith('sf_router_table_version ')) tableVersion = Number(line.split(' ')[1]);
    const m = SAMPLE.exec(line);
    const key = m ? field[m[1]!] : undefined;
    if (!m || !key) continue;
    const port = Number(/port="(\d+)"/.exec(m[2]!)?.[1]);
    if (!Number.isInteger(port)) continue;
    const stat = byPort.get(port) ?? { port, active: 0, connections_total: 0, bytes_in_total: 0, bytes_out_total: 0 };
    stat[key] += Number(m[3]);
    byPort.set(port, stat);
  }
  return { tableVersion, routes: [...byPort.values()].sort((a, b) => a.port - b.port) };
}

async function scrapeRouter(url: string, token: string | undefined): Promise<RouterStats> {
  try {
    const res = await fetch(`${url.replace(/\/+$/, '')}/metrics`, {
      signal: AbortSignal.timeout(ROUTER_SCRAPE_TIMEOUT_MS),
      ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}),
    });
    if (!res.ok) throw new Error(`answered ${res.status}`);
    const { tableVersion, routes } = parseRouterMetrics(await res.text());
    return { url, ok: true, error: null, table_version: tableVersion, routes };
  } catch (err) {
    return { url, ok: false, error: (err as Error).message, table_version: null, routes: [] };
  }
}

/**
 * `routerToken`: what control sends to the routers' admin endpoints (which need a token); under
 * `sf up` the router and control share the admin token.
 */
export function registerConsole(
  server: HttpServer,
  routerAdminUrls: readonly string[],
  routerToken: string | undefined,
  dir = DEFAULT_CONSOLE_DIR,
): void {
  const cache = new Map<string, Buffer>();
  const file = async (name: string): Promise<JsonReply> => {
    const type = FILES[name];
    if (!type) throw new SfError(ErrorCode.NotFound, `no console file '${name.slice(0, 100)}'`, 'path');
    let data = cache.get(name);
    if (!data) {
      try {
        data = await readFile(path.join(dir, name));
      } catch {
        throw new SfError(ErrorCode.NotFound, `the console is not built (npm run build): no ${name}`, 'path');
      }
      cache.set(name, data);
    }
    return { raw: { contentType: type, data, headers: CONSOLE_SECURITY_HEADERS } };
  };
  server.route('get', '/ui', null, async () => ({
    status: 308,
    raw: { contentType: 'text/plain', data: '', headers: { location: '/ui/', ...CONSOLE_SECURITY_HEADERS } },
  }));
  server.route('get', '/ui/', null, () => file('index.html'));
  server.route('get', '/ui/:file', null, (ctx) => file(ctx.params.file ?? ''));
  server.route('get', '/v3/route_stats', 'read', async () => ({
    body: {
      at: new Date().toISOString(),
      routers: await Promise.all(routerAdminUrls.map((url) => scrapeRouter(url, routerToken))),
    },
  }));
}
