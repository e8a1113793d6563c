/**
 * What every `sf` subcommand shares: exit codes and the one-line error convention
 * (DESIGN.md: 0 ok, 1 operation failed, 2 usage or invalid input).
 */
import { isSfError } from '../common/errors';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Prints one line to stderr and exits with the code that fits the error. */
export function exitWithError(err: unknown): never {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`sf: ${message}\n`);
  // An error that names an input field is the caller's to fix: a usage error.
  const usage = err instanceof UsageError || (isSfError(err) && (err.field !== undefined || /INVALID/.test(err.code)));
  process.exit(usage ? EXIT_USAGE : EXIT_FAILED);
}

/** Parses `HOST:PORT` (IPv6 as `[::1]:7601`); a bare port means loopback. */
export function parseHostPort(value: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value) ?? /^()()(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UsageError(`${flag} must be HOST:PORT with a port 0-65535, got '${value}'`);
  }
  const host = m[1] || m[2] || '127.0.0.1';
  return { host, port };
}

/** Parses a positive integer flag, naming the flag on failure. */
export function parseIntFlag(value: string, flag: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value);
  if (!/^-?\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
    // Without an upper bound of its own, "1-9007199254740991" would only confuse.
    const range = max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `${min}-${max}`;
    throw new UsageError(`${flag} must be an integer ${range}, got '${value}'`);
  }
  return n;
}

/**
 * Runs `close` once on SIGINT or SIGTERM, then exits 0: how every `sf` daemon stops cleanly.
 */
export function stopOnSignals(
  log: { info(obj: object, msg: string): void },
  what: string,
  close: () => Promise<void> | void,
): void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, `${what} stopping`);
    void Promise.resolve()
      .then(close)
      .finally(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
