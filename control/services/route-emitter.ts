/**
 * Turns a service's instances into its route and writes it through TcpRouteStore, so every
 * router learns it by the existing snapshot + delta push. Backends are the instances a cell
 * reports with an address: running ones active, fenced ones fenced; the rest are left out until
 * they run. Records carry a modification tag `service:{name}` whose index is the leader token,
 * so a deposed leader's late route write is refused by the store's stale-tag rule.
 */
import type { Backend, BackendState, Route, RouteTls } from '../../protocol';
import type { RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import type { TcpRouteInput, TcpRouteKeyInput } from '../state/tcp-route-types';
import type { CellSnapshot } from './cell-directory';
import type { ServiceRecord } from './service-types';
import { serviceRouteTls, type ServiceCertificates } from './service-certificates';

export class RouteEmitter {
  constructor(
    private readonly groups: RouterGroupStore,
    private readonly routes: TcpRouteStore,
    /** Issues the certificates of services with TLS; without it every route is plain. */
    private readonly certificates?: ServiceCertificates,
  ) {}

  /**
   * The route's TLS section for the service (undefined: a plain route), issuing or renewing its
   * certificate first, so the router never gets a route whose files do not exist yet.
   */
  async desiredTls(service: ServiceRecord): Promise<RouteTls | undefined> {
    if (!this.certificates || !service.tls || service.tls === 'off') return undefined;
    return serviceRouteTls(
      service,
      await this.certificates.ensure(service.name),
      await this.certificates.routerClient(),
    );
  }

  /**
   * The backends the service's route should have now. An instance whose cell reports that it
   * serves TLS is reached over TLS, verified against the platform CA, when the service has TLS.
   */
  desiredBackends(service: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): Backend[] {
    const out: Backend[] = [];
    // A PostgreSQL cell reports `tls` only for an engine that presents the service's certificate,
    // the router's: libpq's default SCRAM channel binding (tls-server-end-point, RFC 5929) binds
    // the client's proof to the certificate it saw at the router, and the engine checks it
    // against its own, so any other certificate fails every password login (docs/tls.md).
    const reencrypt = this.certificates !== undefined && service.tls !== undefined && service.tls !== 'off';
    for (const inst of service.instances) {
      const actual = cells.get(inst.cell)?.actual.get(inst.id);
      if (!actual || actual.port === null || !inst.specWritten) continue;
      let state: BackendState;
      // A fence decision in the record wins over what the cell last reported: a partitioned
      // cell's report may still say running.
      if (inst.fenced || actual.state === 'fenced') state = 'fenced';
      else if (actual.state === 'running') state = 'active';
      else continue;
      out.push({
        id: inst.id,
        host: actual.host,
        port: actual.port,
        role: inst.role,
        weight: 1,
        epoch: inst.epoch,
        state,
        ...(reencrypt && actual.tls === true ? { tls: true } : {}),
      });
    }
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  /**
   * Writes the route if it differs from what routers have; returns true when it wrote. With
   * `keepUnreported` (a new leader's cell grace), a backend whose instance no cell has reported
   * yet is kept: after a restart or a wiped store the reports come back within a heartbeat, and
   * removing the backend meanwhile would close the route in every router.
   */
  async sync(
    service: ServiceRecord,
    cells: ReadonlyMap<string, CellSnapshot>,
    leaderToken: number,
    options: { keepUnreported?: boolean } = {},
  ): Promise<boolean> {
    const group = await this.groups.get(service.routerGroupGuid);
    if (!group) return false;
    const plan = await this.plan(service, await this.routes.route(group, service.port), cells, leaderToken, options);
    // Add before removing, so a moving backend never leaves the route empty (an empty route
    // closes its listener in every router).
    if (plan.upserts.length) await this.routes.upsert(plan.upserts, `service ${service.name} route`);
    if (plan.deletes.length) await this.routes.delete(plan.deletes, `service ${service.name} route`);
    return plan.upserts.length > 0 || plan.deletes.length > 0;
  }

  /**
   * `sync` for several services at once: their routes read in one HMGET per router group and
   * written in one request (a burst of services starting together otherwise cost a few round
   * trips each). Returns the names whose route it wrote. Every backend carries its service's
   * modification tag, so a deposed leader's batch is refused whole by the stale-tag rule.
   */
  async syncMany(
    services: readonly ServiceRecord[],
    cells: ReadonlyMap<string, CellSnapshot>,
    leaderToken: number,
    options: { keepUnreported?: boolean } = {},
  ): Promise<Set<string>> {
    const current = await this.currentRoutes(services);
    const upserts: TcpRouteInput[] = [];
    const deletes: TcpRouteKeyInput[] = [];
    const wrote = new Set<string>();
    for (const service of services) {
      const route = current.get(service.name);
      if (route === undefined) continue;
      const plan = await this.plan(service, route, cells, leaderToken, options);
      if (plan.upserts.length === 0 && plan.deletes.length === 0) continue;
      wrote.add(service.name);
      upserts.push(...plan.upserts);
      deletes.push(...plan.deletes);
    }
    if (upserts.length) await this.routes.upsert(upserts, 'service routes');
    if (deletes.length) await this.routes.delete(deletes, 'service routes');
    return wrote;
  }

  /** What `sync` writes for a service whose stored route is `current`. */
  private async plan(
    service: ServiceRecord,
    current: Route | null,
    cells: ReadonlyMap<string, CellSnapshot>,
    leaderToken: number,
    options: { keepUnreported?: boolean },
  ): Promise<{ upserts: TcpRouteInput[]; deletes: TcpRouteKeyInput[] }> {
    const want = this.desiredBackends(service, cells);
    const tls = want.length ? await this.desiredTls(service) : undefined;
    // A route written before its service had TLS (or by an older control), or before its policy
    // changed, is rewritten whole.
    const tlsStale = current !== null && want.length > 0 && !sameTls(current.tls, tls);
    const have = new Map((current?.backends ?? []).map((b) => [b.id, b]));
    const upserts: TcpRouteInput[] = want
      .filter((b) => tlsStale || !sameBackend(have.get(b.id), b))
      .map((b) => ({
        router_group_guid: service.routerGroupGuid,
        port: service.port,
        backend_ip: b.host,
        backend_port: b.port,
        backend_id: b.id,
        role: b.role,
        epoch: b.epoch,
        state: b.state,
        weight: b.weight,
        backend_tls: b.tls === true,
        mode: 'primary',
        // Every write carries it: a route that lost all its backends is created anew by the next.
        ...(tls ? { tls } : tlsStale ? { clear_tls: true } : {}),
        modification_tag: { guid: `service:${service.name}`, index: leaderToken },
      }));
    const wanted = new Set(want.map((b) => b.id));
    const unreported = (id: string): boolean => {
      const inst = service.instances.find((i) => i.id === id);
      return inst !== undefined && !cells.get(inst.cell)?.actual.has(inst.id);
    };
    const deletes = (current?.backends ?? [])
      .filter((b) => !wanted.has(b.id) && !(options.keepUnreported && unreported(b.id)))
      .map((b) => this.keyOf(service, b));
    return { upserts, deletes };
  }

  /** True when the stored route already has exactly the backends the service should have. */
  async isCurrent(service: ServiceRecord, cells: ReadonlyMap<string, CellSnapshot>): Promise<boolean> {
    return this.isCurrentGiven(service, await this.currentRoute(service), cells);
  }

  /** `isCurrent` against a route read before (`currentRoutes`). */
  async isCurrentGiven(
    service: ServiceRecord,
    current: Route | null,
    cells: ReadonlyMap<string, CellSnapshot>,
  ): Promise<boolean> {
    const want = this.desiredBackends(service, cells);
    const have = new Map((current?.backends ?? []).map((b) => [b.id, b]));
    if (want.length && current && !sameTls(current.tls, await this.desiredTls(service))) return false;
    return have.size === want.length && want.every((b) => sameBackend(have.get(b.id), b));
  }

  /**
   * The stored routes of several services, one HMGET per router group; a service whose group
   * no longer exists is left out (it has no route to write either).
   */
  async currentRoutes(services: readonly ServiceRecord[]): Promise<Map<string, Route | null>> {
    const byGroup = new Map<string, ServiceRecord[]>();
    for (const s of services) {
      const list = byGroup.get(s.routerGroupGuid);
      if (list) list.push(s);
      else byGroup.set(s.routerGroupGuid, [s]);
    }
    const out = new Map<string, Route | null>();
    for (const [guid, members] of byGroup) {
      const group = await this.groups.get(guid);
      if (!group) continue;
      const routes = await this.routes.routesAt(group, [...new Set(members.map((s) => s.port))]);
      for (const s of members) out.set(s.name, routes.get(s.port) ?? null);
    }
    return out;
  }

  /**
   * `remove` for several services at once: their routes read in one HMGET per router group and
   * every backend removed in one request (a bulk deletion otherwise cost two round trips and one
   * table version per service). Each key carries its service's modification tag at `leaderToken`,
   * so a deposed leader's batch is refused whole once a newer leader has written one of those
   * routes. Returns the names whose route it removed.
   */
  async removeMany(services: readonly ServiceRecord[], leaderToken: number): Promise<Set<string>> {
    const current = await this.currentRoutes(services);
    const deletes: TcpRouteKeyInput[] = [];
    const removed = new Set<string>();
    for (const service of services) {
      const route = current.get(service.name);
      if (!route || route.backends.length === 0) continue;
      removed.add(service.name);
      for (const b of route.backends)
        deletes.push({
          ...this.keyOf(service, b),
          modification_tag: { guid: `service:${service.name}`, index: leaderToken },
        });
    }
    if (deletes.length) await this.routes.delete(deletes, 'service routes');
    return removed;
  }

  async currentRoute(service: ServiceRecord): Promise<Route | null> {
    const group = await this.groups.get(service.routerGroupGuid);
    if (!group) return null;
    // Only this port's route: reading the whole table per service made every pass O(services²).
    return this.routes.route(group, service.port);
  }

  private keyOf(service: ServiceRecord, b: Backend): TcpRouteKeyInput {
    return {
      router_group_guid: service.routerGroupGuid,
      port: service.port,
      backend_ip: b.host,
      backend_port: b.port,
      backend_id: b.id,
    };
  }
}

function sameTls(a: Route['tls'], b: RouteTls | undefined): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

function sameBackend(a: Backend | undefined, b: Backend): boolean {
  return (
    !!a &&
    a.host === b.host &&
    a.port === b.port &&
    a.role === b.role &&
    a.epoch === b.epoch &&
    a.state === b.state &&
    a.weight === b.weight &&
    (a.tls ?? false) === (b.tls ?? false)
  );
}
