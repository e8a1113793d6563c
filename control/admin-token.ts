/**
 * Where the admin token lives on a machine: `SF_API_TOKEN`, else `${SF_HOME:-~/.sf}/admin-token`.
 * `sf up` and `sf control` write that file, and the CLI on the same machine finds it there, so a
 * new user needs no configuration (DESIGN.md, "Contracts").
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { generateToken } from './state/token-store';

export function sfHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.SF_HOME || join(homedir(), '.sf');
}

export function adminTokenFile(env: NodeJS.ProcessEnv = process.env): string {
  return join(sfHome(env), 'admin-token');
}

/** The token file's content, or null when there is none. */
export async function readAdminTokenFile(env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  try {
    const token = (await readFile(adminTokenFile(env), 'utf8')).trim();
    return token || null;
  } catch {
    return null;
  }
}

/** `SF_API_TOKEN`, else the token file. */
export async function discoverAdminToken(env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  return env.SF_API_TOKEN || (await readAdminTokenFile(env));
}

/**
 * The admin token a control should accept: `SF_API_TOKEN`, else the token file, else a new token
 * written to the file (mode 0600) so local clients can find it.
 */
export async function ensureAdminToken(
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ token: string; file: string | null }> {
  if (env.SF_API_TOKEN) return { token: env.SF_API_TOKEN, file: null };
  const file = adminTokenFile(env);
  const existing = await readAdminTokenFile(env);
  if (existing) return { token: existing, file };
  const token = generateToken();
  await mkdir(sfHome(env), { recursive: true, mode: 0o700 });
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { token, file };
}
