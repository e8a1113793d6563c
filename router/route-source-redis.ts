/**
 * A RouteSource fed by the control plane through Redis: reads a router group's snapshot, then
 * applies the versioned deltas published on the group's channel in order. A version gap, a
 * reconnect or a heartbeat that sees a newer version than the one applied makes it re-read the
 * snapshot, so a router converges even when pub/sub messages were lost (pub/sub is at-most-once).
 * The last table is persisted to a local JSON file so a router restarted while Redis is down
 * comes up serving it (DESIGN.md: keep serving the last table).
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { type Redis } from 'ioredis';
import { createRedis, ErrorCode, SfError, withDefaults } from '../common';
import {
  parseRoute,
  parseRouteTable,
  type Route,
  type RouteTable,
  type RouteDelta,
  type RouterHeartbeat,
  DEFAULT_KEY_PREFIX,
  routerGroupKeys,
  type RouterGroupKeys,
} from '../protocol';
import type { RouteSource, RouteSourceListener } from './route-source';
import { readRegularFile } from './read-regular-file';

export interface RedisRouteSourceOptions {
  /** Redis URL, e.g. `redis://127.0.0.1:6379`. */
  redisUrl: string;
  /** @default 'default' */
  routerGroup?: string;
  /** Identifies this router in its heartbeat key; unique per router process. */
  routerId: string;
  /** Where the last applied table is persisted; no persistence when absent. */
  cacheFile?: string;
  /** @default 'sf:' */
  keyPrefix?: string;
  /** @default 1000 ms between heartbeats (each also checks for missed deltas) */
  heartbeatIntervalMs?: number;
  /** @default 5000 ms until a silent router's heartbeat key expires */
  heartbeatTtlMs?: number;
  /** @default 3000 ms to reach Redis at start before falling back to the cache file */
  initialConnectTimeoutMs?: number;
  /** @default 500 ms between snapshot retries after a failed read */
  resyncRetryMs?: number;
}

export const DEFAULT_REDIS_ROUTE_SOURCE_OPTIONS = {
  routerGroup: 'default',
  keyPrefix: DEFAULT_KEY_PREFIX,
  heartbeatIntervalMs: 1_000,
  heartbeatTtlMs: 5_000,
  initialConnectTimeoutMs: 3_000,
  resyncRetryMs: 500,
} as const;

type ResolvedOptions = Required<Omit<RedisRouteSourceOptions, 'cacheFile'>> & { cacheFile?: string };

/** Parses a delta message; anything malformed is rejected whole, never half-applied. */
export function parseRouteDelta(text: string): RouteDelta {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new SfError(ErrorCode.RouteSource, 'delta is not valid JSON', 'delta');
  }
  const d = raw as Partial<RouteDelta> | null;
  if (
    !d ||
    typeof d !== 'object' ||
    !Number.isSafeInteger(d.version) ||
    (d.version as number) < 0 ||
    !Array.isArray(d.upserts) ||
    !Array.isArray(d.deletes)
  ) {
    throw new SfError(ErrorCode.RouteSource, 'delta must have version, upserts[] and deletes[]', 'delta');
  }
  const deletes = d.deletes.filter((p): p is number => Number.isInteger(p) && p >= 1 && p <= 65535);
  if (deletes.length !== d.deletes.length) {
    throw new SfError(ErrorCode.RouteSource, 'delta.deletes must hold ports 1-65535', 'delta.deletes');
  }
  const upserts = d.upserts.map((r, i) => parseRoute(r, `delta.upserts[${i}]`));
  return { version: d.version as number, upserts, deletes };
}

export class RedisRouteSource implements RouteSource {
  readonly description: string;
  private readonly opts: ResolvedOptions;
  private readonly keys: RouterGroupKeys;
  private listener: RouteSourceListener | null = null;
  private cmd: Redis | null = null;
  private sub: Redis | null = null;
  private routes = new Map<number, Route>();
  /** -1 until a first table was delivered. */
  private version = -1;
  private syncing = false;
  private resyncAgain = false;
  private buffered: RouteDelta[] = [];
  private cmdReady = false;
  private subReady = false;
  private connected = false;
  private stopped = false;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private cacheWrite: Promise<void> | null = null;
  private cacheDirty = false;
  private firstTable: (() => void) | null = null;
  /** The store was seen behind the applied version; one resync reports it, not every heartbeat. */
  private storeBehind = false;
  /**
   * The highest version the router serves (its apply settled): what the heartbeat reports, so
   * control waiting for a version (a fence, a new service's route) knows its ports are open.
   */
  private servedVersion = -1;

  constructor(options: RedisRouteSourceOptions) {
    this.opts = withDefaults(DEFAULT_REDIS_ROUTE_SOURCE_OPTIONS, options);
    this.keys = routerGroupKeys(this.opts.routerGroup, this.opts.keyPrefix);
    this.description = `redis:${this.opts.routerGroup}`;
  }

  /** The version of the table last delivered, -1 before the first. */
  get appliedVersion(): number {
    return this.version;
  }

  async start(listener: RouteSourceListener): Promise<void> {
    this.listener = listener;
    const first = new Promise<void>((resolve) => (this.firstTable = resolve));
    this.cmd = this.connect('');
    this.sub = this.connect(':sub');
    this.sub.on('message', (_channel: string, message: string) => this.onMessage(message));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.opts.initialConnectTimeoutMs);
    });
    const outcome = await Promise.race([first.then(() => 'table' as const), timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout' && this.version < 0) {
      const cached = await this.loadCache();
      if (!cached) {
        await this.stop();
        throw new SfError(
          ErrorCode.RouteSource,
          `no table: Redis at ${redactUrl(this.opts.redisUrl)} is unreachable and no cache file is usable`,
          'redisUrl',
        );
      }
      this.deliver(cached, true);
      this.listener.onConnectivity?.(false);
    }
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), this.opts.heartbeatIntervalMs);
    this.heartbeatTimer.unref();
  }

  async reload(): Promise<void> {
    if (this.connected) await this.resync();
    else if (this.version >= 0) this.listener?.onTable(this.currentTable());
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    // Removing the heartbeat at once tells control not to wait for this router any more.
    if (this.cmd && this.cmdReady) {
      await this.cmd.del(this.heartbeatKey()).catch(() => undefined);
    }
    this.cmd?.disconnect();
    this.sub?.disconnect();
    await this.cacheWrite;
  }

  private connect(suffix: string): Redis {
    const conn = createRedis(this.opts.redisUrl, {
      connectionName: `sf-router:${this.opts.routerId}${suffix}`,
      // Commands fail fast while disconnected instead of queueing; the snapshot read after the
      // reconnect replaces whatever they would have done.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(50 * times, 1_000),
      lazyConnect: false,
    });
    const isSub = suffix !== '';
    conn.on('error', () => undefined); // Reported through 'close' and onConnectivity instead.
    conn.on('ready', () => {
      if (isSub) {
        // Subscribing before reading the snapshot means no delta can fall between the two.
        conn
          .subscribe(this.keys.channel)
          .then(() => {
            this.subReady = true;
            void this.resync();
          })
          .catch((err: Error) => this.report(`subscribe failed: ${err.message}`));
      } else {
        this.cmdReady = true;
        void this.resync();
      }
    });
    conn.on('close', () => {
      if (isSub) this.subReady = false;
      else this.cmdReady = false;
      this.setConnected(false);
    });
    return conn;
  }

  private setConnected(up: boolean): void {
    if (this.stopped || up === this.connected) return;
    this.connected = up;
    if (!up) this.report('lost the connection to Redis; keeping the last table');
    this.listener?.onConnectivity?.(up);
  }

  private report(message: string): void {
    if (!this.stopped) this.listener?.onError(new SfError(ErrorCode.RouteSource, message));
  }

  private onMessage(message: string): void {
    let delta: RouteDelta;
    try {
      delta = parseRouteDelta(message);
    } catch (err) {
      this.listener?.onError(err as SfError);
      void this.resync();
      return;
    }
    if (this.syncing) {
      this.buffered.push(delta);
      return;
    }
    this.applyDelta(delta);
  }

  /** Applies a delta that directly follows the current version; anything else triggers a resync. */
  private applyDelta(delta: RouteDelta): boolean {
    if (delta.version <= this.version) return true;
    if (delta.version !== this.version + 1 || this.version < 0) {
      void this.resync();
      return false;
    }
    for (const port of delta.deletes) this.routes.delete(port);
    for (const route of delta.upserts) this.routes.set(route.port, route);
    this.version = delta.version;
    this.afterApply(this.listener?.onTable(this.currentTable()));
    return true;
  }

  /** Reads the snapshot (version + routes hash in one transaction) and replays buffered deltas. */
  private async resync(): Promise<void> {
    if (this.stopped || !this.cmd || !this.cmdReady || !this.subReady) return;
    if (this.syncing) {
      this.resyncAgain = true;
      return;
    }
    this.syncing = true;
    this.buffered = [];
    try {
      const res = await this.cmd.multi().get(this.keys.version).hvals(this.keys.routes).exec();
      if (!res) throw new Error('snapshot transaction was aborted');
      for (const [err] of res) if (err) throw err;
      const version = Number(res[0][1] ?? 0);
      const routes = (res[1][1] as string[]).map((text) => JSON.parse(text) as unknown);
      const table = parseRouteTable({ version, routes });
      if (table.version < this.version) {
        // A store that lost data (restarted empty, flushed) must not empty every
        // router. The applied table stays until control republishes a higher version.
        this.listener?.onError(
          new SfError(
            ErrorCode.RouteVersionBackwards,
            `refusing route table version ${table.version} from Redis: older than the applied ${this.version} ` +
              `(the store lost data); keeping the applied table until control publishes a version above ${this.version}`,
          ),
        );
      } else if (table.version !== this.version) this.deliver(table, false);
      const pending = this.buffered.sort((a, b) => a.version - b.version);
      this.buffered = [];
      this.syncing = false;
      for (const delta of pending) if (!this.applyDelta(delta)) break;
      this.setConnected(this.cmdReady && this.subReady);
    } catch (err) {
      this.syncing = false;
      this.report(`snapshot read failed: ${(err as Error).message}`);
      if (!this.stopped && !this.retryTimer) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          void this.resync();
        }, this.opts.resyncRetryMs);
        this.retryTimer.unref();
      }
      return;
    } finally {
      this.syncing = false;
    }
    if (this.resyncAgain) {
      this.resyncAgain = false;
      void this.resync();
    }
  }

  private deliver(table: RouteTable, fromCache: boolean): void {
    this.storeBehind = false;
    this.routes = new Map(table.routes.map((r) => [r.port, r]));
    this.version = table.version;
    const applying = this.listener?.onTable(this.currentTable());
    if (!fromCache) this.afterApply(applying);
    else this.served(table.version, applying);
    this.firstTable?.();
    this.firstTable = null;
  }

  private afterApply(applying: unknown): void {
    this.scheduleCacheWrite();
    this.served(this.version, applying);
  }

  /** Reports `version` in a heartbeat once its apply settled (at once when the listener returned none). */
  private served(version: number, applying: unknown): void {
    const done = (): void => {
      if (version > this.servedVersion) this.servedVersion = version;
      void this.heartbeat();
    };
    if (applying instanceof Promise) applying.then(done, done);
    else done();
  }

  private currentTable(): RouteTable {
    return { version: this.version, routes: [...this.routes.values()] };
  }

  private heartbeatKey(): string {
    return `${this.keys.routerHeartbeatPrefix}${this.opts.routerId}`;
  }

  /** Reports the applied version and notices a newer one whose delta never arrived. */
  private async heartbeat(): Promise<void> {
    if (this.stopped || !this.cmd || !this.cmdReady || this.servedVersion < 0) return;
    const beat: RouterHeartbeat = {
      routerId: this.opts.routerId,
      routerGroup: this.opts.routerGroup,
      version: this.servedVersion,
      connected: this.connected,
      at: Date.now(),
    };
    const failed = this.listener?.listenFailures?.();
    if (failed && failed.length > 0) beat.failedPorts = failed.map((f) => ({ port: f.port, reason: f.reason }));
    try {
      const res = await this.cmd
        .pipeline()
        .set(this.heartbeatKey(), JSON.stringify(beat), 'PX', this.opts.heartbeatTtlMs)
        .get(this.keys.version)
        .exec();
      const remote = Number(res?.[1]?.[1] ?? 0);
      if (remote > this.version && !this.syncing) void this.resync();
      // A store behind the applied version lost data (FLUSHALL, restarted empty) without this
      // router reconnecting: the resync refuses its table and says so once.
      if (remote < this.version && !this.storeBehind && !this.syncing) {
        this.storeBehind = true;
        void this.resync();
      }
    } catch {
      // The connection's 'close' event reports the outage; the next beat tries again.
    }
  }

  private scheduleCacheWrite(): void {
    if (!this.opts.cacheFile) return;
    this.cacheDirty = true;
    if (this.cacheWrite) return;
    // One write at a time, always of the newest table: a burst of deltas costs one or two writes.
    this.cacheWrite = (async () => {
      while (this.cacheDirty) {
        this.cacheDirty = false;
        await this.writeCache(this.currentTable());
      }
      this.cacheWrite = null;
    })();
  }

  private async writeCache(table: RouteTable): Promise<void> {
    const file = this.opts.cacheFile as string;
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      await mkdir(dirname(file), { recursive: true });
      // Write then rename, so a crash mid-write never leaves a torn cache behind.
      await writeFile(tmp, JSON.stringify({ version: table.version, routes: table.routes }));
      await rename(tmp, file);
    } catch (err) {
      this.report(`cannot write cache file ${file}: ${(err as Error).message}`);
    }
  }

  private async loadCache(): Promise<RouteTable | null> {
    if (!this.opts.cacheFile) return null;
    try {
      return parseRouteTable(JSON.parse(await readRegularFile(this.opts.cacheFile, 'cache file', 'cacheFile')));
    } catch (err) {
      this.report(`cache file ${this.opts.cacheFile} is unusable: ${(err as Error).message}`);
      return null;
    }
  }
}

/** Hides a password in a Redis URL before it reaches a log line. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, '//***@');
}
