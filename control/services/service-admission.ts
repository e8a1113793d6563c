/**
 * Admitting a create-service request, on any control (leader or standby): the router group must
 * exist, the placement must be satisfiable with the cells alive now (checked with the same
 * auction the leader runs, so an impossible request fails at once instead of hanging), and the
 * service reserves a free port of its group. The leader then places it.
 */
import { ErrorCode, SfError } from '../../common';
import { defaultDiskSync } from '../../protocol';
import { cellCandidates } from '../placement/cell-candidates';
import { runPlacementAuction } from '../placement/placement-auction';
import { parsePortRanges } from '../state/port-ranges';
import type { RouterGroup, RouterGroupStore } from '../state/router-group-store';
import type { TcpRouteStore } from '../state/tcp-route-store';
import type { CellDirectory } from './cell-directory';
import type { ServiceCreateRequest, ServiceTlsPolicy } from './service-schema';
import type { ServiceStore } from './service-store';
import type { InstanceRecord, ServiceRecord } from './service-types';
import { hasCredentials, newServiceCredentials } from './service-credentials';
import type { ServiceUsage } from './service-usage';

export interface ServiceAdmissionDeps {
  store: ServiceStore;
  directory: CellDirectory;
  groups: RouterGroupStore;
  routes: TcpRouteStore;
  /** Whether control can issue certificates, and the policy of a request without one. @default off, unavailable */
  tls?: {
    available: boolean;
    defaultPolicy: ServiceTlsPolicy;
    /** Issues (or finds) the service's certificate: a PostgreSQL service's engines present it. */
    certificate?: (service: string) => Promise<{ certFile: string; keyFile: string }>;
  };
}

/** A service made from a snapshot: its primary goes to one of the cells holding it. */
export interface RestoreAdmission {
  snapshotId: string;
  /** Live cells whose snapshot store holds it. */
  cells: string[];
  /** Says what the service was made from, in its creation event. */
  description: string;
}

export async function admitService(
  deps: ServiceAdmissionDeps,
  req: ServiceCreateRequest,
  restore?: RestoreAdmission,
): Promise<ServiceRecord> {
  const tls = req.tls ?? deps.tls?.defaultPolicy ?? 'off';
  if (tls !== 'off' && !deps.tls?.available)
    throw new SfError(
      ErrorCode.InvalidRequest,
      `tls '${tls}' needs a platform CA: start control with --ca-dir (sf up does), or ask for tls 'off'`,
      'tls',
    );
  const group = await deps.groups.byName(req.router_group);
  if (!group)
    throw new SfError(
      ErrorCode.InvalidRequest,
      `router_group '${req.router_group}' names no router group`,
      'router_group',
    );
  // The directory's view: registrations read now, reports re-read only for cells that reported
  // since (a full read of every cell's reports made each create cost O(instances)). Read before
  // the change takes its turn: it costs O(cells), and changes run one at a time.
  const cells = await deps.directory.sharedView();
  return deps.store.change<ServiceRecord>(req.name, null, async (current, snapshot) => {
    if (current) throw new SfError(ErrorCode.ServiceExists, `name '${req.name}' is already taken by a service`, 'name');
    const slots = Array.from({ length: req.replicas + 1 }, (_, k) => ({ instanceId: `${req.name}-${k}` }));
    const request = {
      service: req.name,
      engine: req.engine,
      ...(req.executor ? { executor: req.executor } : {}),
      ...(req.sidecars?.length ? { sidecars: req.sidecars } : {}),
      sizeMb: req.volume.size_mb,
    };
    const usage = deps.store.usageAt(snapshot);
    const candidates = cellCandidates(cells, (cell) => usage.promisedMb(cell));
    const now = Date.now();
    const placed: InstanceRecord[] = [];
    if (restore) {
      // The primary is placed here, on a cell that holds the snapshot; replicas by the leader.
      const [first] = runPlacementAuction(
        { ...request, slots: slots.slice(0, 1), occupied: [] },
        candidates.filter((c) => restore.cells.includes(c.name)),
      );
      placed.push({
        id: first.instanceId,
        cell: first.cell,
        zone: first.zone,
        role: 'primary',
        epoch: 1,
        generation: 0,
        specWritten: false,
        placedAt: now,
      });
      runPlacementAuction(
        { ...request, slots: slots.slice(1), occupied: [{ cell: first.cell, zone: first.zone }] },
        candidates,
      );
    } else runPlacementAuction({ ...request, slots, occupied: [] }, candidates);
    const port = await freePort(deps, group, () => deps.store.usageAt(snapshot));
    // Issued before the record exists, so the first engine finds the files at its first start.
    const tlsCertificate =
      (req.engine === 'postgres' || req.engine === 'redis') && tls !== 'off' && deps.tls?.certificate
        ? await deps.tls.certificate(req.name)
        : undefined;
    const record: ServiceRecord = {
      name: req.name,
      engine: req.engine,
      replicas: req.replicas,
      durability: req.durability,
      diskSync: req.disk_sync ?? defaultDiskSync(req.durability, req.engine),
      volume: { sizeMb: req.volume.size_mb },
      fencing: { policy: req.fencing.policy },
      ...(req.command ? { command: { file: req.command.file, args: req.command.args } } : {}),
      ...(req.executor ? { executor: req.executor } : {}),
      tls,
      ...(tlsCertificate ? { tlsCertificate } : {}),
      ...(req.sidecars?.length ? { sidecars: [...req.sidecars] } : {}),
      ...(req.resources && (req.resources.memory_mb || req.resources.cpus)
        ? {
            resources: {
              ...(req.resources.memory_mb ? { memoryMb: req.resources.memory_mb } : {}),
              ...(req.resources.cpus ? { cpus: req.resources.cpus } : {}),
            },
          }
        : {}),
      routerGroup: group.name,
      routerGroupGuid: group.guid,
      port,
      status: 'pending',
      message: null,
      epoch: 1,
      instances: placed,
      nextIndex: placed.length,
      ...(restore && placed[0] ? { restore: { snapshotId: restore.snapshotId, instanceId: placed[0].id } } : {}),
      leaderToken: 0,
      // Nobody reaches the engine without credentials, the platform included.
      ...(hasCredentials(req.engine) ? { credentials: newServiceCredentials(req.engine) } : {}),
      createdAt: now,
      updatedAt: now,
    };
    const event = {
      type: 'service-created' as const,
      service: req.name,
      message: `service ${req.name} (${req.engine}, ${req.replicas} replicas) created on port ${port}${restore ? ` from ${restore.description}` : ''}`,
    };
    return { change: { record, events: [event] }, result: record };
  });
}

/** Marks a service for deletion; the leader stops its instances, removes the route and frees the port. */
export async function requestServiceDeletion(store: ServiceStore, name: string): Promise<ServiceRecord> {
  // Deletion requests arriving together share a commit: each decides from its own record alone.
  return store.changeJoined<ServiceRecord>(name, async (current) => {
    if (!current) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
    if (current.status === 'deleting') return { done: current };
    const record: ServiceRecord = {
      ...current,
      status: 'deleting',
      message: 'deletion requested',
      updatedAt: Date.now(),
    };
    return { change: { record }, result: record };
  });
}

/** Candidate ports checked against the route table per round trip. */
const PORT_BATCH = 16;

/**
 * The lowest port of the group that no other service and no route holds: candidates come from the
 * services' port index (no scan of every service or route), then one round trip asks which of
 * them a route holds (routes not made for a service are rare, so one batch nearly always does).
 */
async function freePort(deps: ServiceAdmissionDeps, group: RouterGroup, usage: () => ServiceUsage): Promise<number> {
  const ranges = parsePortRanges(group.reservable_ports);
  const routed = new Set<number>();
  for (;;) {
    const candidates = usage().freePorts(group.guid, ranges, PORT_BATCH, routed);
    if (candidates.length === 0) break;
    const taken = await deps.routes.portsTaken(group, candidates);
    const free = candidates.find((p) => !taken.has(p));
    if (free !== undefined) return free;
    for (const p of taken) routed.add(p);
  }
  throw new SfError(
    ErrorCode.NoRoutePort,
    `router group '${group.name}' has no free port left in ${group.reservable_ports}`,
    'router_group',
  );
}
