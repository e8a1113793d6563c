/**
 * The system user each engine runs as: Redis as `redis`, PostgreSQL
 * as `postgres`, `tcp` commands as `sf-instance`, when the cell is root. A cell that is not root
 * runs its instances as itself: it has no other user to give them.
 */
import { ErrorCode, SfError } from '../common';
import { lookupUser, type RunAs } from './run-command';

/** True when the cell runs as root, and so must hand engines to unprivileged users. */
export function cellIsRoot(): boolean {
  return process.getuid?.() === 0;
}

/**
 * The system user an engine runs as: the named user when the cell is root, nothing (the cell's
 * own user) otherwise. A missing user is an error that says how to create it, never a silent
 * fall back to root.
 */
export function engineUser(user: string, engine: string): RunAs | undefined {
  if (!cellIsRoot()) return undefined;
  const found = lookupUser(user);
  if (!found) {
    throw new SfError(
      ErrorCode.EngineUnavailable,
      `engine ${engine} runs as the system user '${user}' when the cell is root, and it does not exist: ` +
        `create it (useradd --system --no-create-home --shell /usr/sbin/nologin ${user}, as scripts/setup.sh does)`,
    );
  }
  return found;
}

/** `engineUser` as an availability: why the engine cannot run, or empty when it can. */
export function engineUserProblem(user: string, engine: string): string {
  try {
    engineUser(user, engine);
    return '';
  } catch (err) {
    return (err as Error).message;
  }
}
