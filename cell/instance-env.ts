/**
 * The environment and the system user an instance runs with.
 *
 * An engine gets an environment built from its spec and a few locale basics, never the cell's
 * own: the cell's environment holds the platform's secrets (`SF_API_TOKEN`, `SF_REDIS_URL`, a
 * credentials file's path), and anything an engine can read, a client of that engine may be able
 * to read too (PostgreSQL's `COPY ... FROM PROGRAM 'env'`, any `tcp` command).
 */

/** The variables an instance may inherit from the cell: the search path and the locale. */
export const INHERITED_ENV = ['PATH', 'LANG', 'LANGUAGE', 'LC_ALL', 'LC_CTYPE', 'TZ'] as const;

/** @default used when the cell has no PATH of its own */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The environment of an engine process or a helper (initdb, pg_basebackup...): the inherited
 * basics, `HOME`/`USER`/`LOGNAME` of the user it runs as, and what the engine asks for.
 */
export function cleanEnv(
  extra: Record<string, string> = {},
  runAs?: { user: string },
  home = '/nonexistent',
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of INHERITED_ENV) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  env.PATH ??= DEFAULT_PATH;
  const user = runAs?.user ?? process.env.USER;
  if (user) {
    env.USER = user;
    env.LOGNAME = user;
  }
  env.HOME = home;
  return { ...env, ...extra };
}
