/**
 * TCP routes in Redis. Every change of a router group writes, in one atomic script: the changed
 * routes in the group's snapshot hash, the CF records and their expiry index, the delta (kept in a
 * capped list and published to routers) and the route events. Writes spanning several groups
 * commit in the same script, so a request is applied whole or not at all.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  parseRoute,
  type Backend,
  type Route,
  type RouteTable,
  type RouteDelta,
  type RouterHeartbeat,
  type GroupKeys,
  type KeyLayout,
} from '../../protocol';
import { ErrorCode, SfError, withDefaults } from '../../common';
import { withCasRetry, type CasGuard, type CasOp } from './cas-commit';
import { parsePortRanges, rangesContain } from './port-ranges';
import type { RouterGroup, RouterGroupStore } from './router-group-store';
import {
  CF_RECORD_FIELDS,
  CF_UPDATABLE_FIELDS,
  ROUTE_LEVEL_FIELDS,
  backendIdOf,
  mappingKey,
  type ModificationTag,
  type RouteEvent,
  type TcpRouteInput,
  type TcpRouteKeyInput,
  type TcpRouteMapping,
  type TcpRouteRecord,
  type CfRecordFields,
} from './tcp-route-types';

/** Filters of `list`; absent ones match everything. */
export interface TcpRouteFilter {
  routerGroupGuid?: string;
  /** Isolation segments to keep; `''` keeps records without one (CF's `?isolation_segment=`). */
  isolationSegments?: readonly string[];
}

export interface TcpRouteStoreOptions {
  /** @default 100 deltas kept per group for inspection */
  deltaHistory?: number;
  /** @default Date.now; tests move time forward instead of sleeping */
  now?: () => number;
}

export const DEFAULT_TCP_ROUTE_STORE_OPTIONS = { deltaHistory: 100, now: Date.now } as const;

/** The state of one group as read for a write: routes and records by key, plus the guard. */
interface GroupState {
  group: RouterGroup;
  keys: GroupKeys;
  version: number;
  routes: Map<number, Route | null>;
  records: Map<string, TcpRouteRecord | null>;
  touchedPorts: Set<number>;
  touchedRecords: Set<string>;
  events: RouteEvent[];
}

interface ResolvedItem<T> {
  item: T;
  group: RouterGroup;
  key: string;
  field: string;
}

export class TcpRouteStore {
  private readonly opts: Required<TcpRouteStoreOptions>;

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
    private readonly groups: RouterGroupStore,
    options: TcpRouteStoreOptions = {},
  ) {
    this.opts = withDefaults(DEFAULT_TCP_ROUTE_STORE_OPTIONS, options);
  }

  /** Creates or refreshes records; `field` prefixes error paths (`tcp_routes[3].port`). */
  async upsert(items: TcpRouteInput[], field = 'tcp_routes'): Promise<TcpRouteMapping[]> {
    // An empty request changes nothing and answers as CF does (201 / 204), without a commit.
    if (items.length === 0) return [];
    const resolved = await this.resolve(items, field, true);
    return withCasRetry(async () => {
      const states = await this.read(resolved);
      const now = this.opts.now();
      await this.checkFrontendTls(resolved, states, now);
      const out = resolved.map(({ item, group, key, field: f }) => {
        const st = states.get(group.name) as GroupState;
        const prev = st.records.get(key) ?? null;
        checkTag(prev?.modification_tag, item.modification_tag, `${f}.modification_tag`);
        const ttl = item.ttl ? item.ttl : null;
        const record: TcpRouteRecord = {
          ...cfFieldsOf(prev, item),
          port: item.port,
          backend_id: backendIdOf(item),
          backend_ip: item.backend_ip,
          backend_port: item.backend_port,
          ttl,
          modification_tag: nextTag(prev?.modification_tag, item.modification_tag),
          expires_at: ttl === null ? null : now + ttl * 1000,
        };
        const route = buildRoute(st.routes.get(item.port) ?? null, item, record.backend_id, group.name, f);
        st.routes.set(item.port, route);
        st.records.set(key, record);
        st.touchedPorts.add(item.port);
        st.touchedRecords.add(key);
        const view = toMapping(record, route, group.guid);
        st.events.push({ type: 'Upsert', route: view });
        return view;
      });
      return { ...this.plan(states), result: out };
    }, this.redis);
  }

  /** Removes records; unknown ones are ignored (deletes are idempotent, as in CF). */
  async delete(items: TcpRouteKeyInput[], field = 'tcp_routes'): Promise<number> {
    if (items.length === 0) return 0;
    const resolved = await this.resolve(items, field, false);
    return this.remove(resolved, (prev, r) =>
      checkTag(prev.modification_tag, r.item.modification_tag, `${r.field}.modification_tag`),
    );
  }

  /** Deletes every record whose TTL ran out; safe to run in several controls at once. */
  async sweepExpired(limitPerGroup = 1_000): Promise<number> {
    let removed = 0;
    const now = this.opts.now();
    for (const group of await this.groups.list()) {
      const gk = this.keys.group(group.name);
      const due = await this.redis.zrangebyscore(gk.expiry, '-inf', now, 'LIMIT', 0, limitPerGroup);
      if (due.length === 0) continue;
      const resolved = due.map((key) => ({ item: null, group, key, field: key }));
      // Re-checked inside the transaction: a record re-registered meanwhile has a later expiry.
      removed += await this.remove(resolved, (prev) => {
        if (prev.expires_at === null || prev.expires_at > now) return false;
        return true;
      });
    }
    return removed;
  }

  /**
   * Records whose TTL has not run out (as CF lists them: a record past its expiry is gone even
   * before a sweep removes it), filtered by group and isolation segment.
   */
  async list(filter: TcpRouteFilter = {}): Promise<TcpRouteMapping[]> {
    const { routerGroupGuid, isolationSegments } = filter;
    const groups = routerGroupGuid
      ? [await this.groups.mustGet(routerGroupGuid, 'router_group_guid')]
      : await this.groups.list();
    const now = this.opts.now();
    const segments = isolationSegments ? new Set(isolationSegments) : null;
    const keep = (r: TcpRouteRecord) =>
      (r.expires_at === null || r.expires_at > now) && (!segments || segments.has(r.isolation_segment ?? ''));
    const tx = this.redis.multi();
    for (const g of groups) {
      const gk = this.keys.group(g.name);
      tx.hvals(gk.mappings).hgetall(gk.routes);
    }
    const res = (await tx.exec()) ?? [];
    const out: TcpRouteMapping[] = [];
    groups.forEach((g, i) => {
      const records = (res[2 * i]?.[1] as string[]).map((t) => JSON.parse(t) as TcpRouteRecord);
      const routes = res[2 * i + 1]?.[1] as Record<string, string>;
      for (const record of records.filter(keep)) {
        const routeText = routes[String(record.port)];
        if (routeText) out.push(toMapping(record, JSON.parse(routeText) as Route, g.guid));
      }
    });
    return out.sort((a, b) => a.port - b.port || a.backend_id.localeCompare(b.backend_id));
  }

  /** The group's snapshot exactly as routers read it; `versionOnly`: its version and no routes. */
  async table(group: RouterGroup, options: { versionOnly?: boolean } = {}): Promise<RouteTable> {
    const gk = this.keys.group(group.name);
    if (options.versionOnly) return { version: Number((await this.redis.get(gk.version)) ?? 0), routes: [] };
    const res = await this.redis.multi().get(gk.version).hvals(gk.routes).exec();
    const routes = ((res?.[1]?.[1] as string[]) ?? []).map((t) => JSON.parse(t) as Route);
    return { version: Number(res?.[0]?.[1] ?? 0), routes: routes.sort((a, b) => a.port - b.port) };
  }

  /** One port's route as routers read it (one HGET, however large the table is). */
  async route(group: RouterGroup, port: number): Promise<Route | null> {
    return parseOrNull<Route>(await this.redis.hget(this.keys.group(group.name).routes, String(port)));
  }

  /** Several ports' routes as routers read them (one HMGET); null for a port without one. */
  async routesAt(group: RouterGroup, ports: readonly number[]): Promise<Map<number, Route | null>> {
    const out = new Map<number, Route | null>();
    if (ports.length === 0) return out;
    const texts = await this.redis.hmget(this.keys.group(group.name).routes, ...ports.map(String));
    ports.forEach((port, i) => out.set(port, parseOrNull<Route>(texts[i])));
    return out;
  }

  async portsInUse(group: RouterGroup): Promise<number[]> {
    return (await this.redis.hkeys(this.keys.group(group.name).routes)).map(Number);
  }

  /** Which of `ports` a route of the group holds: one round trip, whatever the table's size. */
  async portsTaken(group: RouterGroup, ports: readonly number[]): Promise<Set<number>> {
    if (ports.length === 0) return new Set();
    const key = this.keys.group(group.name).routes;
    const p = this.redis.pipeline();
    for (const port of ports) p.hexists(key, String(port));
    const res = (await p.exec()) ?? [];
    const taken = new Set<number>();
    res.forEach(([err, held], i) => {
      if (err) throw err;
      if (held === 1) taken.add(ports[i]!);
    });
    return taken;
  }

  /** Live routers of a group, from their heartbeat keys. */
  async routers(group: RouterGroup): Promise<RouterHeartbeat[]> {
    const prefix = this.keys.group(group.name).routerHeartbeatPrefix;
    const keys: string[] = [];
    let cursor = '0';
    do {
      // The whole keyspace is walked (10,000 services keep tens of thousands of keys): ten
      // thousand a call, a few round trips per fence step instead of dozens.
      const [next, batch] = await this.redis.scan(cursor, 'MATCH', `${escapeGlob(prefix)}*`, 'COUNT', 10_000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
    if (keys.length === 0) return [];
    const values = await this.redis.mget(...keys);
    return values
      .filter((v): v is string => v !== null)
      .map((v) => JSON.parse(v) as RouterHeartbeat)
      .sort((a, b) => a.routerId.localeCompare(b.routerId));
  }

  private async resolve<T extends TcpRouteKeyInput>(
    items: T[],
    field: string,
    checkPorts: boolean,
  ): Promise<Array<ResolvedItem<T>>> {
    const byGuid = new Map((await this.groups.list()).map((g) => [g.guid, g]));
    return items.map((item, i) => {
      const f = `${field}[${i}]`;
      const group = byGuid.get(item.router_group_guid);
      if (!group) {
        throw new SfError(
          ErrorCode.InvalidRequest,
          `${f}.router_group_guid '${item.router_group_guid}' names no router group`,
          `${f}.router_group_guid`,
        );
      }
      if (checkPorts && group.type !== 'tcp') {
        throw new SfError(
          ErrorCode.InvalidRequest,
          `${f}.router_group_guid '${group.guid}' is an ${group.type} router group; tcp routes need a tcp group`,
          `${f}.router_group_guid`,
        );
      }
      if (checkPorts && !rangesContain(parsePortRanges(group.reservable_ports), item.port)) {
        throw new SfError(
          ErrorCode.PortNotReservable,
          `${f}.port ${item.port} is outside router group '${group.name}' reservable_ports ${group.reservable_ports}`,
          `${f}.port`,
        );
      }
      return { item, group, key: mappingKey(item.port, backendIdOf(item)), field: f };
    });
  }

  /**
   * Cloud Foundry's rule: every live record on one port with the same backend SNI host name agrees
   * on `terminate_frontend_tls`, so a router never has to both terminate and pass through the same
   * name. The other records of a port are read after the guarded read; the commit's version guard
   * makes the pair consistent.
   */
  private async checkFrontendTls(
    items: Array<ResolvedItem<TcpRouteInput>>,
    states: Map<string, GroupState>,
    now: number,
  ): Promise<void> {
    const others = new Map<string, { st: GroupState; keys: Set<string> }>();
    for (const { group, item } of items) {
      const st = states.get(group.name) as GroupState;
      for (const b of st.routes.get(item.port)?.backends ?? []) {
        const key = mappingKey(item.port, b.id);
        if (st.records.has(key)) continue;
        let o = others.get(group.name);
        if (!o) others.set(group.name, (o = { st, keys: new Set() }));
        o.keys.add(key);
      }
    }
    const stored = new Map<string, TcpRouteRecord | null>();
    await Promise.all(
      [...others.values()].map(async ({ st, keys }) => {
        const list = [...keys];
        const texts = await this.redis.hmget(st.keys.mappings, ...list);
        list.forEach((key, i) => stored.set(`${st.group.name}\n${key}`, parseOrNull<TcpRouteRecord>(texts[i])));
      }),
    );
    // Earlier items of the same request count as stored: one request cannot mix the two either.
    const seen = new Map<string, boolean>();
    for (const { group, item, field } of items) {
      const st = states.get(group.name) as GroupState;
      const want = item.terminate_frontend_tls ?? false;
      const sni = item.backend_sni_hostname ?? '';
      const similar = (st.routes.get(item.port)?.backends ?? [])
        .map((b) => {
          const key = mappingKey(item.port, b.id);
          return st.records.has(key) ? (st.records.get(key) ?? null) : (stored.get(`${group.name}\n${key}`) ?? null);
        })
        .filter((r): r is TcpRouteRecord => r !== null && (r.expires_at === null || r.expires_at > now))
        .filter((r) => (r.backend_sni_hostname ?? '') === sni)
        .map((r) => r.terminate_frontend_tls ?? false);
      const sameRequest = seen.get(`${group.name}\n${item.port}\n${sni}`);
      if (sameRequest !== undefined) similar.push(sameRequest);
      if (similar.some((other) => other !== want)) {
        throw new SfError(
          ErrorCode.InvalidRequest,
          `${field}.terminate_frontend_tls: ${want} not allowed: other backends of port ${item.port}` +
            `${sni ? ` with backend_sni_hostname '${sni}'` : ''} have ${!want}`,
          `${field}.terminate_frontend_tls`,
        );
      }
      seen.set(`${group.name}\n${item.port}\n${sni}`, want);
    }
  }

  /** Reads version, routes and records of every group the items touch, in one transaction. */
  private async read(items: Array<{ group: RouterGroup; key: string }>): Promise<Map<string, GroupState>> {
    const wanted = new Map<string, { group: RouterGroup; ports: Set<number>; records: Set<string> }>();
    for (const { group, key } of items) {
      let w = wanted.get(group.name);
      if (!w) wanted.set(group.name, (w = { group, ports: new Set(), records: new Set() }));
      w.ports.add(portOfKey(key));
      w.records.add(key);
    }
    const tx = this.redis.multi();
    const plan = [...wanted.values()].map((w) => {
      const gk = this.keys.group(w.group.name);
      const ports = [...w.ports];
      const records = [...w.records];
      tx.get(gk.version)
        .hmget(gk.routes, ...ports.map(String))
        .hmget(gk.mappings, ...records);
      return { ...w, gk, ports, records };
    });
    const res = (await tx.exec()) ?? [];
    for (const [err] of res) if (err) throw err;
    const states = new Map<string, GroupState>();
    plan.forEach((p, i) => {
      const routeTexts = res[3 * i + 1][1] as Array<string | null>;
      const recordTexts = res[3 * i + 2][1] as Array<string | null>;
      states.set(p.group.name, {
        group: p.group,
        keys: p.gk,
        version: Number(res[3 * i][1] ?? 0),
        routes: new Map(p.ports.map((port, j) => [port, parseOrNull<Route>(routeTexts[j])])),
        records: new Map(p.records.map((key, j) => [key, parseOrNull<TcpRouteRecord>(recordTexts[j])])),
        touchedPorts: new Set(),
        touchedRecords: new Set(),
        events: [],
      });
    });
    return states;
  }

  /**
   * Removes the records `accept` agrees to (it may also throw to refuse the whole request).
   * Returns how many were removed.
   */
  private async remove<T>(
    items: Array<ResolvedItem<T>>,
    accept: (prev: TcpRouteRecord, item: ResolvedItem<T>) => boolean | void,
  ): Promise<number> {
    return withCasRetry<number>(async () => {
      const states = await this.read(items);
      let removed = 0;
      for (const r of items) {
        const st = states.get(r.group.name) as GroupState;
        const prev = st.records.get(r.key);
        if (!prev || accept(prev, r) === false) continue;
        const route = st.routes.get(prev.port) ?? null;
        const next = route ? withoutBackend(route, prev.backend_id) : null;
        st.routes.set(prev.port, next);
        st.records.set(r.key, null);
        st.touchedPorts.add(prev.port);
        st.touchedRecords.add(r.key);
        if (route) st.events.push({ type: 'Delete', route: toMapping(prev, route, r.group.guid) });
        removed++;
      }
      if (removed === 0) return { done: 0 };
      return { ...this.plan(states), result: removed };
    }, this.redis);
  }

  /** Turns the touched parts of each group into guarded writes, a delta and events. */
  private plan(states: Map<string, GroupState>): { guards: CasGuard[]; ops: CasOp[] } {
    const guards: CasGuard[] = [];
    const ops: CasOp[] = [];
    const events: RouteEvent[] = [];
    for (const st of states.values()) {
      if (st.touchedPorts.size === 0) continue;
      const { keys: gk } = st;
      guards.push({ key: gk.version, expected: st.version });
      const delta: RouteDelta = { version: st.version + 1, upserts: [], deletes: [] };
      for (const port of st.touchedPorts) {
        const route = st.routes.get(port) ?? null;
        if (route) {
          delta.upserts.push(route);
          ops.push({ cmd: 'HSET', key: gk.routes, field: String(port), value: JSON.stringify(route) });
        } else {
          delta.deletes.push(port);
          ops.push({ cmd: 'HDEL', key: gk.routes, field: String(port) });
        }
      }
      for (const key of st.touchedRecords) {
        const record = st.records.get(key) ?? null;
        if (record) ops.push({ cmd: 'HSET', key: gk.mappings, field: key, value: JSON.stringify(record) });
        else ops.push({ cmd: 'HDEL', key: gk.mappings, field: key });
        if (record?.expires_at != null)
          ops.push({ cmd: 'ZADD', key: gk.expiry, score: record.expires_at, member: key });
        else ops.push({ cmd: 'ZREM', key: gk.expiry, member: key });
      }
      const text = JSON.stringify(delta);
      ops.push({ cmd: 'LPUSH_CAPPED', key: gk.deltas, value: text, cap: this.opts.deltaHistory });
      ops.push({ cmd: 'PUBLISH', channel: gk.channel, message: text });
      events.push(...st.events);
    }
    if (events.length > 0)
      ops.push({ cmd: 'PUBLISH', channel: this.keys.routeEvents, message: JSON.stringify(events) });
    return { guards, ops };
  }
}

/**
 * Cloud Foundry's rule: a write with the same tag guid and a lower index than the stored one
 * comes from a writer that has since been superseded, so it is refused. A new guid starts a new
 * generation and is accepted; an equal tag is a re-registration (it refreshes the TTL).
 */
function checkTag(stored: ModificationTag | undefined, given: ModificationTag | undefined, field: string): void {
  if (stored && given && stored.guid === given.guid && given.index < stored.index) {
    throw new SfError(
      ErrorCode.StaleModificationTag,
      `${field} index ${given.index} is older than the stored index ${stored.index}`,
      field,
    );
  }
}

function nextTag(stored: ModificationTag | undefined, given: ModificationTag | undefined): ModificationTag {
  if (given) return given;
  if (stored) return { guid: stored.guid, index: stored.index + 1 };
  return { guid: randomUUID(), index: 0 };
}

/**
 * The CF fields of a record: all from the request for a new record; on a re-registration only
 * those CF's `updateTcpRouteMapping` replaces, the rest kept from the first registration.
 */
function cfFieldsOf(prev: TcpRouteRecord | null, item: TcpRouteInput): CfRecordFields {
  const out: Record<string, unknown> = {};
  for (const name of CF_RECORD_FIELDS) {
    const updatable = (CF_UPDATABLE_FIELDS as readonly string[]).includes(name);
    const value = prev && !updatable ? prev[name] : item[name];
    if (value !== undefined) out[name] = value;
  }
  return out as CfRecordFields;
}

function buildRoute(base: Route | null, item: TcpRouteInput, backendId: string, group: string, field: string): Route {
  const prev = base?.backends.find((b) => b.id === backendId);
  const backend: Backend = {
    id: backendId,
    host: item.backend_ip,
    port: item.backend_port,
    role: item.role ?? prev?.role ?? 'primary',
    weight: item.weight ?? prev?.weight ?? 1,
    epoch: item.epoch ?? prev?.epoch ?? 1,
    state: item.state ?? prev?.state ?? 'active',
    ...((item.backend_tls ?? prev?.tls) ? { tls: true } : {}),
  };
  const backends = base ? base.backends.map((b) => (b.id === backendId ? backend : b)) : [];
  if (!prev) backends.push(backend);
  const route: Record<string, unknown> = {
    ...(base ?? { port: item.port, routerGroup: group, mode: 'primary' }),
    backends,
  };
  for (const name of ROUTE_LEVEL_FIELDS) if (item[name] !== undefined) route[name] = item[name];
  if (item.clear_tls && item.tls === undefined) delete route.tls;
  // The router's own validation, so control never stores a route a router would refuse.
  return parseRoute(route, field);
}

function withoutBackend(route: Route, backendId: string): Route | null {
  const backends = route.backends.filter((b) => b.id !== backendId);
  return backends.length === 0 ? null : { ...route, backends };
}

function toMapping(record: TcpRouteRecord, route: Route, groupGuid: string): TcpRouteMapping {
  const backend = route.backends.find((b) => b.id === record.backend_id);
  const view: TcpRouteMapping = {
    router_group_guid: groupGuid,
    port: record.port,
    backend_ip: record.backend_ip,
    backend_port: record.backend_port,
    // CF's always-present fields with its zero values, then the ones it omits when empty.
    backend_tls_port: record.backend_tls_port ?? 0,
    instance_id: record.instance_id ?? '',
    isolation_segment: record.isolation_segment ?? '',
    ...(record.backend_sni_hostname !== undefined && { backend_sni_hostname: record.backend_sni_hostname }),
    ...(record.sni_rewrite_hostname !== undefined && { sni_rewrite_hostname: record.sni_rewrite_hostname }),
    ...(record.terminate_frontend_tls && { terminate_frontend_tls: true }),
    ...(record.alpns && { alpns: record.alpns }),
    ...(record.enable_backend_mtls && { enable_backend_mtls: true }),
    backend_id: record.backend_id,
    ttl: record.ttl,
    modification_tag: record.modification_tag,
    expires_at: record.expires_at === null ? null : new Date(record.expires_at).toISOString(),
    role: backend?.role ?? 'primary',
    weight: backend?.weight ?? 1,
    epoch: backend?.epoch ?? 1,
    state: backend?.state ?? 'active',
    ...(backend?.tls && { backend_tls: true }),
  };
  for (const name of ROUTE_LEVEL_FIELDS) {
    if (route[name] !== undefined) (view as unknown as Record<string, unknown>)[name] = route[name];
  }
  return view;
}

function portOfKey(key: string): number {
  return Number(key.slice(0, key.indexOf('|')));
}

function parseOrNull<T>(text: string | null | undefined): T | null {
  return text ? (JSON.parse(text) as T) : null;
}

function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, '\\$&');
}
