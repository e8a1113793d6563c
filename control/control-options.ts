/**
 * Options of `sf control`, apart from the server so the CLI can show defaults without loading
 * uWS, ioredis and pino.
 */
import type { Logger } from 'pino';
import { DEFAULT_KEY_PREFIX } from '../protocol';
import type { ControlApiOptions } from './api/api-options';
import type { StaticToken } from './api/token-authenticator';
import type { JwtVerifierOptions } from './api/jwt-authenticator';
import type { ServicePlaneOptions } from './service-plane';

export { DEFAULT_RESERVABLE_PORTS } from './state/port-ranges';
import { DEFAULT_RESERVABLE_PORTS } from './state/port-ranges';

export interface ControlServerOptions {
  /** @default 'redis://127.0.0.1:6379' */
  redisUrl?: string;
  /** @default '127.0.0.1' */
  host?: string;
  /** @default 7600; 0 asks the OS for a free port */
  port?: number;
  /** The admin token (all scopes). Without it only static and API-created tokens work. */
  adminToken?: string;
  /** Further tokens from a config file. */
  staticTokens?: StaticToken[];
  /** UAA-style JWTs (RS256 key, JWKS or HS256 secret, issuer); without it only opaque tokens work. */
  jwt?: JwtVerifierOptions;
  /** @default 1048576 bytes per request body */
  bodyLimitBytes?: number;
  /** @default 1000 ms between TTL sweeps */
  sweepIntervalMs?: number;
  /** @default 'sf:' */
  keyPrefix?: string;
  /** @default '16000-16999', the default router group's ports when control creates it */
  defaultReservablePorts?: string;
  /** @default a pino logger named 'control' */
  logger?: Logger;
  /** @default Date.now (tests advance time for TTL expiry) */
  now?: () => number;
  /** Request limits, event-consumer backlog and audit retention of the HTTP API. */
  api?: ControlApiOptions;
  /** Service instances, cells, leader election and convergence (control/services). */
  services?: ServicePlaneOptions;
  /**
   * Serve the API over HTTPS with this certificate and key (`sf control --tls-cert/--tls-key`;
   * docs/tls.md), and trust `caFile` when forwarding to a leader. The files are looked at every
   * `reloadCheckMs` (default 30 s) and a renewed pair served to new connections. @default none (plain HTTP)
   */
  tls?: { certFile: string; keyFile: string; caFile?: string; reloadCheckMs?: number };
  /** Admin URLs of routers whose per-route counters `GET /v3/route_stats` (the console) reads. @default [] */
  routerAdminUrls?: string[];
}

export const DEFAULT_CONTROL_SERVER_OPTIONS = {
  redisUrl: 'redis://127.0.0.1:6379',
  host: '127.0.0.1',
  port: 7600,
  bodyLimitBytes: 1024 * 1024,
  sweepIntervalMs: 1_000,
  keyPrefix: DEFAULT_KEY_PREFIX,
  defaultReservablePorts: DEFAULT_RESERVABLE_PORTS,
} as const;
