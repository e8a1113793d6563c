/**
 * The HTTP API's limits as `sf control` takes them (ControlServerOptions.api), apart from the
 * server so the CLI can show defaults without loading uWS.
 */
export interface ControlApiOptions {
  /** @default 8192 bytes of request target (path and query); longer gets 414 */
  maxUrlBytes?: number;
  /** @default 16384 bytes of header names and values; more gets 431 */
  maxHeaderBytes?: number;
  /** @default 1048576 bytes an event consumer may fall behind before it is disconnected */
  eventBacklogLimitBytes?: number;
  /** @default 10000 audit entries kept in Redis */
  auditMaxEntries?: number;
  /** @default 120 s: largest route ttl, and the ttl of a registration without one (CF's max_ttl) */
  maxRouteTtlSeconds?: number;
  /**
   * `strict`: Service Foundry's extra routing checks (unknown fields, stranded ports, groups in
   * use); `cf`: Cloud Foundry's behaviour. @default 'strict'
   */
  routingCompat?: 'strict' | 'cf';
}

export const DEFAULT_CONTROL_API_OPTIONS = {
  maxUrlBytes: 8 * 1024,
  maxHeaderBytes: 16 * 1024,
  eventBacklogLimitBytes: 1024 * 1024,
  auditMaxEntries: 10_000,
  maxRouteTtlSeconds: 120,
  routingCompat: 'strict',
} as const;
