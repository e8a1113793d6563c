/**
 * Structured logs (pino, JSON lines). Each module logs through its own logger, named after it
 * (`router`, `control`, `cell`, `cli`, or finer: `router:relay`), whose level comes from `SF_LOG`:
 * a comma-separated list of `module:level` pairs, where `*` matches every module and a pair for
 * `router` also covers `router:relay` (e.g. `SF_LOG=cell:debug,router:info,*:warn`). The older
 * `SF_LOG_LEVEL` sets the level of modules `SF_LOG` does not name. The hot path never logs;
 * per-connection lines are at debug level and only built when that level is enabled.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

/** @default 'info' */
export const DEFAULT_LOG_LEVEL = 'info';

/**
 * The level `SF_LOG` gives `module`: the most specific matching entry wins (`router:relay` over
 * `router` over `*`); unknown levels are ignored so a typo cannot silence a process.
 */
export function moduleLogLevel(module: string, env: NodeJS.ProcessEnv = process.env): string {
  let best: { level: string; specificity: number } | undefined;
  for (const entry of (env.SF_LOG ?? '').split(',')) {
    const at = entry.lastIndexOf(':');
    if (at <= 0) continue;
    const name = entry.slice(0, at).trim();
    const level = entry
      .slice(at + 1)
      .trim()
      .toLowerCase();
    if (!LEVELS.has(level)) continue;
    const matches = name === '*' || name === module || module.startsWith(`${name}:`);
    if (!matches) continue;
    const specificity = name === '*' ? 0 : name.length;
    if (!best || specificity > best.specificity) best = { level, specificity };
  }
  if (best) return best.level;
  const fallback = env.SF_LOG_LEVEL?.toLowerCase();
  return fallback && LEVELS.has(fallback) ? fallback : DEFAULT_LOG_LEVEL;
}

export interface LoggerOptions {
  /** Extra fields on every line (e.g. `{ cell: 'cell-1' }`). */
  base?: Record<string, unknown>;
  /** @default stdout; the cell logs to stderr, its stdout belongs to engine output */
  destination?: 'stdout' | 'stderr';
  /** @default the level `SF_LOG` / `SF_LOG_LEVEL` give this module */
  level?: string;
}

/** A logger for one module; `child()` loggers of it take their own level from `SF_LOG` too. */
export function createLogger(module: string, options: LoggerOptions = {}): Logger {
  const level = options.level ?? moduleLogLevel(module);
  const base = { pid: process.pid, ...options.base };
  return options.destination === 'stderr'
    ? pino({ name: module, level, base }, pino.destination(2))
    : pino({ name: module, level, base });
}

/** A sub-module's logger: the parent's fields, its own name and level (`router:relay`). */
export function moduleLogger(parent: Logger, module: string): Logger {
  return parent.child({ module }, { level: moduleLogLevel(module) });
}

/** A logger that drops everything: for embedding a router in tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
