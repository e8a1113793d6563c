/**
 * Structured logs (pino, JSON lines). The hot path never logs; per-connection lines are at
 * debug level and only built when that level is enabled.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.SF_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } });
}

/** A logger that drops everything: for embedding a router in tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
