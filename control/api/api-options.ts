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
}

export const DEFAULT_CONTROL_API_OPTIONS = {
  maxUrlBytes: 8 * 1024,
  maxHeaderBytes: 16 * 1024,
  eventBacklogLimitBytes: 1024 * 1024,
  auditMaxEntries: 10_000,
} as const;
