/**
 * Credentials for the state store (DESIGN.md "Security by default": secrets live in files with
 * mode 0600 or in the environment of the process that needs them, never in argv or logs).
 *
 * A process gets its Redis user and password from a JSON file — `--redis-credentials FILE` or
 * `SF_REDIS_CREDENTIALS_FILE` — read once at start by the `sf` command that runs the role, and
 * installed as the process's credentials, which every `createRedis` connection then presents
 * (control alone opens half a dozen connections in as many modules; one process is one role, so
 * one set of credentials per process is the model, not a shortcut). A URL that carries its own
 * `user:password@` keeps working and wins, so operators who already set `SF_REDIS_URL` that way
 * change nothing.
 *
 * File format: `{"username": "router", "password": "..."}`; `username` may be omitted (the
 * `default` user). For Sentinel, `sentinelUsername` / `sentinelPassword` authenticate to the
 * Sentinels themselves, `username` / `password` to the master they name.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, unlink, writeFile } from 'node:fs/promises';
import { ErrorCode, SfError } from './errors';

export interface RedisCredentials {
  /** ACL user; absent means Redis's `default` user. */
  username?: string;
  password: string;
  /** For a `redis-sentinel://` URL: the Sentinels' own ACL user. */
  sentinelUsername?: string;
  /** For a `redis-sentinel://` URL: the Sentinels' own password. */
  sentinelPassword?: string;
}

/** The environment variable naming the credentials file when no flag does. */
export const REDIS_CREDENTIALS_ENV = 'SF_REDIS_CREDENTIALS_FILE';

/** Largest credentials file read; anything bigger is not one. */
const MAX_FILE_BYTES = 64 * 1024;

function invalid(file: string, why: string): SfError {
  return new SfError(ErrorCode.InvalidOption, `Redis credentials file ${file}: ${why}`, 'redisCredentials');
}

/**
 * Reads and checks a credentials file. Refused when it is not a regular file, when group or others
 * may read or write it (as ssh refuses a private key), or when someone other than this user or
 * root owns it. The checks run on the opened descriptor, so a file swapped in between the check
 * and the read is not the one read.
 */
export async function readRedisCredentialsFile(file: string): Promise<RedisCredentials> {
  let handle;
  try {
    // O_NONBLOCK: a FIFO planted at the path must not hang the opening process.
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    throw invalid(file, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (err as Error).message);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw invalid(file, 'is not a regular file');
    if ((st.mode & 0o077) !== 0)
      throw invalid(
        file,
        `mode ${(st.mode & 0o777).toString(8).padStart(4, '0')} lets group or others read it; chmod 600 it`,
      );
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid && st.uid !== 0)
      throw invalid(file, `is owned by uid ${st.uid}, not by this user (${uid}) or root`);
    if (st.size > MAX_FILE_BYTES) throw invalid(file, `is larger than ${MAX_FILE_BYTES} bytes`);
    return parseRedisCredentials(await handle.readFile('utf8'), file);
  } finally {
    await handle.close();
  }
}

/** Parses the JSON of a credentials file; `source` names it in errors (never the content). */
export function parseRedisCredentials(text: string, source: string): RedisCredentials {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    // The content is a secret: the message must not quote it.
    throw invalid(source, 'is not JSON {"username", "password"}');
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw invalid(source, 'must be a JSON object');
  const o = raw as Record<string, unknown>;
  const known = ['username', 'password', 'sentinelUsername', 'sentinelPassword'];
  for (const key of Object.keys(o)) if (!known.includes(key)) throw invalid(source, `unknown field '${key}'`);
  const str = (key: string, required: boolean): string | undefined => {
    const v = o[key];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v.length === 0 || v.length > 4096 || /[\r\n\0]/.test(v))
      throw invalid(source, `'${key}' must be a non-empty string without line breaks`);
    return v;
  };
  const creds: RedisCredentials = { password: str('password', true) as string };
  const username = str('username', false);
  if (username !== undefined) {
    if (/\s/.test(username)) throw invalid(source, "'username' must not contain spaces");
    creds.username = username;
  }
  const sentinelUsername = str('sentinelUsername', false);
  const sentinelPassword = str('sentinelPassword', false);
  if (sentinelUsername !== undefined) creds.sentinelUsername = sentinelUsername;
  if (sentinelPassword !== undefined) creds.sentinelPassword = sentinelPassword;
  return creds;
}

/**
 * Writes a credentials file with mode 0600 from its first byte (created under a temporary name
 * with that mode, then renamed), so no reader ever sees it with wider permissions.
 */
export async function writeRedisCredentialsFile(file: string, creds: RedisCredentials): Promise<void> {
  await writeSecretFile(file, `${JSON.stringify(creds)}\n`);
}

/** Writes `content` to `file` with mode 0600, atomically. */
export async function writeSecretFile(file: string, content: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    // 'wx': never follow or reuse something already at the temporary name.
    await writeFile(tmp, content, { mode: 0o600, flag: 'wx' });
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** A new random password: 32 bytes, hex (no character needs quoting anywhere). */
export function generateRedisPassword(): string {
  return randomBytes(32).toString('hex');
}

let processCredentials: RedisCredentials | undefined;

/** Installs the credentials every later `createRedis` of this process presents (undefined: none). */
export function setProcessRedisCredentials(creds: RedisCredentials | undefined): void {
  processCredentials = creds;
}

/** The credentials installed with `setProcessRedisCredentials`, if any. */
export function processRedisCredentials(): RedisCredentials | undefined {
  return processCredentials;
}

/**
 * The credentials file a role should use: the flag, else `SF_REDIS_CREDENTIALS_FILE`; read,
 * checked and installed for the process. Returns the file read, or undefined when none is set.
 */
export async function loadProcessRedisCredentials(
  flag: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string | undefined> {
  const file = flag || env[REDIS_CREDENTIALS_ENV] || undefined;
  if (!file) return undefined;
  setProcessRedisCredentials(await readRedisCredentialsFile(file));
  return file;
}

/** True when a Redis URL carries its own user or password (`redis://user:pass@host`). */
export function urlHasCredentials(url: string): boolean {
  return /^[a-z+-]+:\/\/[^/]*@/i.test(url);
}

/** `url` with any `user:password@` replaced by `***@`, for logs and messages. */
export function redactRedisUrl(url: string): string {
  return url.replace(/^([a-z+-]+:\/\/)[^/]*@/i, '$1***@');
}
