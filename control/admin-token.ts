/**
 * Where the admin token of a control lives on a machine: `SF_API_TOKEN`, else the file
 * `${SF_HOME:-~/.sf}/admin-tokens/<host>-<port>` named after the control's address. `sf up` and
 * `sf control` write that file (mode 0600, directory 0700), and the CLI reads the one for the URL
 * it talks to, so a new user needs no configuration (DESIGN.md, "Contracts").
 *
 * Keyed by address because with one `admin-token` file per machine, two `sf up`
 * with different data dirs shared it, and the CLI sent the first platform's token to the second.
 * A control's address is unique on a machine while it runs, so two running platforms never share
 * a file, and the CLI never sends a token to a control it was not written for.
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { generateToken } from './state/token-store';

/** @default 'http://127.0.0.1:7600' (DESIGN.md's control address) */
export const DEFAULT_CONTROL_URL = 'http://127.0.0.1:7600';

/** The file name of older versions (one per machine); read only as a fallback, never written. */
const LEGACY_TOKEN_FILE = 'admin-token';
const TOKEN_DIR = 'admin-tokens';

export function sfHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.SF_HOME || join(homedir(), '.sf');
}

/** The control URL the CLI talks to: `SF_CONTROL_URL`, else the default. */
export function controlUrlFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.SF_CONTROL_URL || DEFAULT_CONTROL_URL;
}

/**
 * The URL local clients reach a control listening on `host:port` by. A wildcard listener is
 * reached over loopback, so its token file is named after loopback.
 */
export function controlUrlForListen(host: string, port: number): string {
  const local = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${local.includes(':') ? `[${local}]` : local}:${port}`;
}

/**
 * The file-name key of a control URL: `<host>-<port>`, `localhost` as 127.0.0.1, any character
 * other than letters, digits, `.` and `-` (an IPv6 address's colons) as `_`.
 */
export function controlAddressKey(controlUrl: string): string {
  let url: URL;
  try {
    url = new URL(controlUrl);
  } catch {
    // Not a URL: key the text itself, so a typo finds no token rather than someone else's.
    return controlUrl.replace(/[^A-Za-z0-9.-]/g, '_');
  }
  let host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost') host = '127.0.0.1';
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return `${host.replace(/[^A-Za-z0-9.-]/g, '_')}-${port}`;
}

/** The admin token file of the control at `controlUrl`. */
export function adminTokenFile(controlUrl: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(sfHome(env), TOKEN_DIR, controlAddressKey(controlUrl));
}

async function readToken(file: string): Promise<string | null> {
  try {
    const token = (await readFile(file, 'utf8')).trim();
    return token || null;
  } catch {
    return null;
  }
}

function isLoopback(controlUrl: string): boolean {
  try {
    const host = new URL(controlUrl).hostname.replace(/^\[|\]$/g, '');
    return host === 'localhost' || host === '::1' || /^127\./.test(host);
  } catch {
    return false;
  }
}

/**
 * The token file's content for `controlUrl`, or null. A machine-wide `${SF_HOME}/admin-token`
 * (written by hand, or by older versions) is the fallback for a loopback control that has no file
 * of its own; it is never sent to a control on another host.
 */
export async function readAdminTokenFile(
  controlUrl: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string | null> {
  const own = await readToken(adminTokenFile(controlUrl, env));
  if (own || !isLoopback(controlUrl)) return own;
  return readToken(join(sfHome(env), LEGACY_TOKEN_FILE));
}

/** `SF_API_TOKEN`, else the token file of `controlUrl` (default: `SF_CONTROL_URL` or the default URL). */
export async function discoverAdminToken(
  env: NodeJS.ProcessEnv = process.env,
  controlUrl: string = controlUrlFromEnv(env),
): Promise<string | null> {
  return env.SF_API_TOKEN || (await readAdminTokenFile(controlUrl, env));
}

/**
 * The admin token the control at `controlUrl` should accept: `SF_API_TOKEN`, else its token file,
 * else a new token written to that file (mode 0600) so local clients can find it.
 */
export async function ensureAdminToken(
  env: NodeJS.ProcessEnv,
  controlUrl: string,
): Promise<{ token: string; file: string | null }> {
  if (env.SF_API_TOKEN) return { token: env.SF_API_TOKEN, file: null };
  const file = adminTokenFile(controlUrl, env);
  const existing = await readToken(file);
  if (existing) return { token: existing, file };
  const token = generateToken();
  await mkdir(join(sfHome(env), TOKEN_DIR), { recursive: true, mode: 0o700 });
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { token, file };
}
