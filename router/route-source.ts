/**
 * Where a router's table comes from. Implementations: a static JSON file (`route-source-file.ts`)
 * and the control plane's Redis push path (`route-source-redis.ts`). A source hands the router
 * whole, validated tables; the router works out what changed.
 */
import { type SfError } from '../common';
import type { RouteTable } from '../protocol';

export interface RouteSourceListener {
  /**
   * Throws an SfError when the router cannot serve `table` (a backend that is the router itself).
   * A source whose tables are written whole by an operator (a route file) calls it and refuses a
   * failing table like an invalid one; pushed sources leave it to the router to refuse routes.
   */
  check?(table: RouteTable): void;
  /**
   * A new, validated table. Versions only grow; a source never hands back an older table. A
   * promise returned settles once the table is served (new ports listening, fenced backends'
   * connections destroyed): a source that reports the version it applied reports it only then.
   */
  onTable(table: RouteTable): unknown;
  /** A problem that leaves the last good table in force (bad file, Redis down, version gap). */
  onError(err: SfError): void;
  /**
   * The source lost (false) or regained (true) its upstream. The router keeps its last table
   * (`keep-last`, the default) or stops serving (`fail-closed`) while disconnected.
   */
  onConnectivity?(connected: boolean): void;
  /**
   * Ports of the table the router could not open: a source that reports to control (heartbeats)
   * says so, so that the route is not called served.
   */
  listenFailures?(): ReadonlyArray<{ port: number; reason: string }>;
}

export interface RouteSource {
  /** Short name for logs and `/health`, e.g. `file:/etc/sf/routes.json` or `redis:default`. */
  readonly description: string;
  /**
   * True for a table an operator wrote (a route file): a first table with a port the router cannot
   * open stops the router, as a bad configuration should. A pushed table is served in part instead,
   * its failed ports retried and reported, since one squatted port must not take every route down.
   */
  readonly strictStart?: boolean;
  /**
   * Starts delivering tables. Resolves once the first table was delivered, or rejects when the
   * source cannot produce a valid first table (the router then refuses to start).
   */
  start(listener: RouteSourceListener): Promise<void>;
  /** Asks the source to deliver its current table again (SIGHUP). */
  reload(): Promise<void>;
  stop(): Promise<void>;
}
