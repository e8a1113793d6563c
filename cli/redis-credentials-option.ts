/**
 * `--redis-credentials FILE` for every role that talks to the state store (`sf control`,
 * `sf router`, `sf cell`): the file, else `SF_REDIS_CREDENTIALS_FILE`, is read and checked
 * (common/redis-credentials.ts) before the command runs, and its user and password are presented
 * by every Redis connection of the process. A file path, unlike a password, may appear in argv.
 */
import type { Command } from 'commander';
import { loadProcessRedisCredentials, REDIS_CREDENTIALS_ENV } from '../common/redis-credentials';

/** Adds the option to `command` and loads the credentials before its action runs. */
export function withRedisCredentialsOption(command: Command): Command {
  return command
    .option(
      '--redis-credentials <file>',
      `JSON {"username","password"} for the state Redis, mode 0600 (default: ${REDIS_CREDENTIALS_ENV}); a URL with user:password@ wins`,
    )
    .hook('preAction', async (cmd) => {
      await loadProcessRedisCredentials((cmd.opts() as { redisCredentials?: string }).redisCredentials);
    });
}
