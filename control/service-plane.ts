/**
 * The service plane of one control process: the services and cells API (answered by every
 * control), and the leader election plus convergence loop (acting only while leader). Started by
 * control-server.ts next to the routing API.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { registerCellsApi } from './api/routes-cells';
import { registerVolumesApi } from './api/routes-volumes';
import { registerServiceUpdateApi } from './api/routes-service-update';
import { registerCertificatesApi } from './api/routes-certificates';
import { registerServicesApi } from './api/routes-services';
import { DEFAULT_ROUTER_HOST, registerServiceKeysApi } from './api/routes-service-keys';
import type { HttpServer } from './api/http-server';
import type { FailoverCoordinator } from './services/failover-coordinator';
import { registerFencingApi } from './api/routes-fencing';
import { registerSnapshotsApi } from './api/routes-snapshots';
import { SnapshotCoordinator } from './services/snapshot-coordinator';
import { registerMovesApi } from './api/routes-moves';
import { VolumeMover } from './services/volume-mover';
import { FencingFailoverCoordinator } from './failover/fencing-coordinator';
import type { FailoverOptions } from './failover/failover-options';
import { ConvergenceLoop } from './convergence/convergence-loop';
import { putTombstoneOp } from './convergence/volume-tombstones';
import { OrphanCollector } from './convergence/orphan-collector';
import { StateKeeper } from './convergence/state-keeper';
import { RouteEmitter } from './services/route-emitter';
import { ServiceCertificates } from './services/service-certificates';
import type { ServiceTlsPolicy } from './services/service-schema';
import { ServiceReconciler, type ServiceReconcilerOptions } from './convergence/service-reconciler';
import { LeaderElector } from './leader/leader-elector';
import { withDefaults } from '../common';
import type { RouterGroupStore } from './state/router-group-store';
import type { TcpRouteStore } from './state/tcp-route-store';
import { CellDirectory } from './services/cell-directory';
import { keyLayout } from '../protocol';
import { ServiceStore } from './services/service-store';
import type { ControlMetrics } from './control-metrics';
import { FencingHistory } from './failover/fencing-history';
import { DEFAULT_FAILOVER_OPTIONS } from './failover/failover-options';

export interface ServicePlaneOptions {
  /** Leader lock TTL: how long a crashed leader delays its standby. @default 3000 */
  leaderTtlMs?: number;
  /** Lock renewal / standby retry interval. @default 1000 */
  leaderRenewMs?: number;
  /** Convergence poll interval besides events. @default 1000 */
  convergencePollMs?: number;
  /**
   * Every cell's reports are read again at least this often, spread over the leader's passes,
   * and whatever differs from its view is reconciled (ConvergenceLoopOptions.resyncMs).
   * @default 30000
   */
  convergenceResyncMs?: number;
  /**
   * Every settled service is reconciled again at least this often, spread evenly over the period
   * (ConvergenceLoopOptions.recheckMs). @default 300000
   */
  convergenceRecheckMs?: number;
  /**
   * A new leader judges no cell dead before this much of its term has passed, and never before
   * twice the longest cell registration TTL (ConvergenceLoopOptions.cellGraceMs).
   * @default 0 (the TTL rule alone)
   */
  cellGraceMs?: number;
  /** Replaces the fencing coordinator (tests, or `DegradedFailoverCoordinator` to never promote). @default FencingFailoverCoordinator */
  failoverCoordinator?: FailoverCoordinator;
  /** Options of the default fencing coordinator (docs/fencing.md). */
  failover?: FailoverOptions;
  reconciler?: ServiceReconcilerOptions;
  /** Id in the leader lock value. @default a random UUID */
  holderId?: string;
  /**
   * File where the leader keeps its last known copy of control's state, restored when the store
   * comes back empty or older (`sf control --data-dir`). @default none (no copy)
   */
  stateFile?: string;
  /** The router address clients use, named in service keys' `host` and `uri`. @default '127.0.0.1' */
  routerHost?: string;
  /**
   * The platform CA (`sf control --ca-dir`, docs/tls.md): its directory (certificates are issued
   * into `issued/`), and the operator's CA certificate and key when it is not the one made there.
   * With it, services with TLS get certificates and routes that terminate TLS.
   * @default none (plain routes only)
   */
  platformCa?: { dir: string; operator?: { certFile: string; keyFile: string } };
  /** The TLS policy of a service created without one. @default 'required' with a platform CA, else 'off' */
  defaultServiceTls?: ServiceTlsPolicy;
}

export const DEFAULT_SERVICE_PLANE_OPTIONS: Required<
  Pick<ServicePlaneOptions, 'leaderTtlMs' | 'leaderRenewMs' | 'convergencePollMs'>
> = {
  leaderTtlMs: 3_000,
  leaderRenewMs: 1_000,
  convergencePollMs: 1_000,
};

export interface ServicePlaneDeps {
  redis: Redis;
  redisUrl: string;
  keyPrefix: string;
  groups: RouterGroupStore;
  routes: TcpRouteStore;
  logger: Logger;
  /** Counts passes, fencing steps and leader changes. @default none */
  metrics?: ControlMetrics;
  /** The CA (PEM) a leader's HTTPS address is verified with when a standby forwards to it. @default the system's */
  leaderCa?: Buffer;
}

export interface ServicePlane {
  readonly store: ServiceStore;
  readonly elector: LeaderElector;
  readonly loop: ConvergenceLoop;
  /** Publishes this control's API URL while it leads, so standbys forward actions to it. */
  advertise(url: string): void;
  close(): Promise<void>;
}

export async function startServicePlane(
  server: HttpServer,
  deps: ServicePlaneDeps,
  options: ServicePlaneOptions = {},
): Promise<ServicePlane> {
  const opts = withDefaults(DEFAULT_SERVICE_PLANE_OPTIONS, options);
  const log = deps.logger;
  const keys = keyLayout(deps.keyPrefix);
  const store = new ServiceStore(deps.redis, keys);
  const directory = new CellDirectory(deps.redis, keys);
  const routerHost = opts.routerHost ?? DEFAULT_ROUTER_HOST;
  const certificates = opts.platformCa
    ? await ServiceCertificates.open(opts.platformCa.dir, routerHost, opts.platformCa.operator)
    : undefined;
  const emitter = new RouteEmitter(deps.groups, deps.routes, certificates);
  const history = new FencingHistory(
    deps.redis,
    keys,
    opts.failover?.historyLimit ?? DEFAULT_FAILOVER_OPTIONS.historyLimit,
  );
  const fencing = new FencingFailoverCoordinator(
    {
      redis: deps.redis,
      store,
      directory,
      emitter,
      groups: deps.groups,
      routes: deps.routes,
      logger: log,
      history: deps.metrics ? deps.metrics.observeFencing(history) : history,
    },
    { primaryLeaseTtlMs: opts.reconciler?.primaryLeaseTtlMs, ...opts.failover },
  );
  const reconciler = new ServiceReconciler(store, emitter, opts.failoverCoordinator ?? fencing, opts.reconciler);
  let loop: ConvergenceLoop | undefined; // eslint-disable-line prefer-const -- assigned once the elector exists, which needs it in its callbacks
  const elector = new LeaderElector(deps.redis, {
    lockKey: keys.leaderLock,
    tokenKey: keys.leaderToken,
    holderId: opts.holderId,
    ttlMs: opts.leaderTtlMs,
    renewMs: opts.leaderRenewMs,
    onElected: (fence) => {
      log.info({ token: fence.token, holder: fence.holder }, 'elected leader: placing and converging');
      deps.metrics?.leaderChanged(true);
      loop?.kick(0);
    },
    onDemoted: (fence) => {
      log.warn({ token: fence.token }, 'no longer leader: standing by');
      deps.metrics?.leaderChanged(false);
    },
    onError: (err) => log.warn({ err: err.message }, 'leader lock problem'),
  });
  loop = new ConvergenceLoop(
    elector,
    store,
    directory,
    reconciler,
    {
      redisUrl: deps.redisUrl,
      pollMs: opts.convergencePollMs,
      cellGraceMs: opts.cellGraceMs,
      resyncMs: opts.convergenceResyncMs,
      recheckMs: opts.convergenceRecheckMs,
      logger: log,
      onPass: (seconds, ok) => deps.metrics?.observePass(seconds, ok),
    },
    new OrphanCollector(deps.redis, keys, undefined, log),
    opts.stateFile ? new StateKeeper(deps.redis, keys, opts.stateFile, log) : undefined,
  );
  const tls = {
    available: certificates !== undefined,
    defaultPolicy: opts.defaultServiceTls ?? (certificates ? 'required' : 'off'),
    ...(certificates
      ? {
          certificate: async (service: string) => {
            const files = await certificates.ensure(service);
            return { certFile: files.certFile, keyFile: files.keyFile };
          },
        }
      : {}),
  };
  registerServicesApi(server, { store, directory, groups: deps.groups, routes: deps.routes, elector, tls });
  registerServiceKeysApi(server, {
    store,
    directory,
    redis: deps.redis,
    routerHost,
    ...(certificates ? { caFile: certificates.caFile } : {}),
  });
  registerCellsApi(server, { directory, store });
  registerVolumesApi(server, { directory, store });
  registerServiceUpdateApi(server, { store, directory, redis: deps.redis, tls });
  registerCertificatesApi(server, { store, ...(certificates ? { certificates } : {}) });
  registerSnapshotsApi(server, {
    store,
    directory,
    groups: deps.groups,
    routes: deps.routes,
    snapshots: new SnapshotCoordinator(deps.redis, store, directory),
  });
  registerMovesApi(
    server,
    new VolumeMover(deps.redis, deps.redisUrl, store, directory, opts.reconciler?.primaryLeaseTtlMs, {
      canSwitch: () => fencing.isLeader(),
      switchover: async (service, target) => {
        const res = await fencing.act('failover', service, target, {
          awaitRejoin: false,
          // The source of a move is not shot because one position read went unanswered.
          failoverIfSilent: false,
          // The moved primary's volume goes with a tombstone in the same commit, so it is deleted
          // even if this control stops before the mover deletes it.
          retire: (rec, old) => [
            putTombstoneOp(store.keys, {
              cell: old.cell,
              instanceId: old.id,
              service: rec.name,
              reason: 'replaced',
              at: Date.now(),
              deleteAfter: Date.now(),
            }),
          ],
        });
        // Writes fail from the route fence until the new primary's route is published.
        const fenced = res.steps.find((s) => s.step === 'route-fence');
        const published = res.steps.find((s) => s.step === 'publish');
        return { windowMs: fenced && published ? published.at - fenced.at : null };
      },
      // The move's own leftovers carry no retention: the data lives on in the moved instance.
      tombstoneOp: (cell, instanceId, service) =>
        putTombstoneOp(store.keys, {
          cell,
          instanceId,
          service,
          reason: 'replaced',
          at: Date.now(),
          deleteAfter: Date.now(),
        }),
    }),
  );
  fencing.attach(elector);
  registerFencingApi(server, {
    coordinator: fencing,
    store,
    directory,
    ...(deps.leaderCa ? { leaderCa: deps.leaderCa } : {}),
  });
  await loop.start();
  await elector.start();
  const running = loop;
  return {
    store,
    elector,
    loop: running,
    advertise: (url) => fencing.advertise(url),
    async close() {
      fencing.stopAdvertising();
      await running.stop();
      await elector.stop();
    },
  };
}
