/**
 * Prometheus metrics of one router. Values are read from the router's plain counters at
 * scrape time (collect callbacks), so the relay path never touches prom-client.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { PROCESS_METRICS_SETTINGS } from '../common';
import type { Router, RouterStatus } from './router';
import type { RouteStats } from './route-stats';

type CounterField = Exclude<keyof RouteStats, 'port' | 'sni' | 'active'>;

const ROUTE_COUNTERS: Array<{ name: string; help: string; field: CounterField }> = [
  { name: 'sf_router_connections_total', help: 'Client connections accepted per route port.', field: 'total' },
  {
    name: 'sf_router_bytes_in_total',
    help: 'Bytes from clients towards backends per route port.',
    field: 'closedBytesIn',
  },
  {
    name: 'sf_router_bytes_out_total',
    help: 'Bytes from backends towards clients per route port.',
    field: 'closedBytesOut',
  },
  {
    name: 'sf_router_connect_errors_total',
    help: 'Backend connection attempts that failed per route port.',
    field: 'connectErrors',
  },
  {
    name: 'sf_router_connect_timeouts_total',
    help: 'Backend connection attempts that timed out per route port.',
    field: 'connectTimeouts',
  },
  {
    name: 'sf_router_refused_no_backend_total',
    help: 'Clients refused because no eligible backend existed.',
    field: 'refusedNoBackend',
  },
  {
    name: 'sf_router_refused_max_connections_total',
    help: 'Clients refused by a connection limit (the route own or the router-wide one).',
    field: 'refusedMaxConnections',
  },
  {
    name: 'sf_router_refused_self_loop_total',
    help: 'Backend connections not made because the backend is one of the router own listening addresses.',
    field: 'refusedSelfLoop',
  },
  {
    name: 'sf_router_tls_handshakes_total',
    help: 'TLS handshakes the router completed as the server on terminating routes.',
    field: 'tlsHandshakes',
  },
  {
    name: 'sf_router_tls_handshake_errors_total',
    help: 'Clients whose TLS start failed (handshake error, no certificate loaded, timeout).',
    field: 'tlsHandshakeErrors',
  },
  {
    name: 'sf_router_backend_tls_errors_total',
    help: 'Backend connections refused because TLS to the backend failed (certificate not verified by the backend CA, SSLRequest declined).',
    field: 'backendTlsErrors',
  },
  {
    name: 'sf_router_refused_plaintext_total',
    help: 'Clients refused because their route requires TLS and they spoke plaintext.',
    field: 'refusedPlaintext',
  },
  {
    name: 'sf_router_fenced_kills_total',
    help: 'Connections destroyed because their backend was fenced.',
    field: 'killedFenced',
  },
  {
    name: 'sf_router_drained_kills_total',
    help: 'Connections closed when their drain timeout expired.',
    field: 'killedDrained',
  },
  { name: 'sf_router_idle_timeouts_total', help: 'Connections closed by the idle timeout.', field: 'idleTimeouts' },
];

/** Router-wide gauges, each read from `status()` at scrape time. */
const STATUS_GAUGES: Array<{ name: string; help: string; value: (s: RouterStatus) => number }> = [
  {
    name: 'sf_router_connection_limit',
    help: 'Client connections the router takes across all routes, derived from its descriptor limit.',
    value: (s) => s.connectionLimit,
  },
  {
    name: 'sf_router_fd_limit',
    help: 'The soft RLIMIT_NOFILE read at start (-1 where it could not be read).',
    value: (s) => s.fdLimit ?? -1,
  },
  {
    name: 'sf_router_fd_table',
    help: 'Slots of the descriptor table, grown at start for the connection limit (-1 where /proc does not say).',
    value: (s) => s.fdTable ?? -1,
  },
  {
    // Clients of a port beyond this, reconnecting at once (after a restart of this router), find
    // the queue full and wait for a SYN retransmit: compare with sf_router_active_connections.
    name: 'sf_router_listen_backlog',
    help: 'Clients the kernel queues on each route port until the router accepts them (the effective listen backlog).',
    value: (s) => s.accept.backlog.effective,
  },
  { name: 'sf_router_table_version', help: 'Version of the route table in force.', value: (s) => s.tableVersion },
  { name: 'sf_router_routes', help: 'Routes in the table in force.', value: (s) => s.routes },
  {
    name: 'sf_router_ports_not_listening',
    help: 'Route ports of the table the router could not open (another process holds the port); retried.',
    value: (s) => s.listenFailures.count,
  },
  {
    name: 'sf_router_source_connected',
    help: '1 while the route source reaches its upstream.',
    value: (s) => (s.sourceConnected ? 1 : 0),
  },
];

export function createRouterMetrics(router: Router, withProcessMetrics = true): Registry {
  const registry = new Registry();
  if (withProcessMetrics)
    collectDefaultMetrics({ register: registry, prefix: 'sf_router_', ...PROCESS_METRICS_SETTINGS });
  let snapshot: RouteStats[] = [];
  // One status() per scrape for every router-wide gauge, taken with the route snapshot.
  let status: RouterStatus | undefined;
  const refresh = (): RouteStats[] => {
    status = router.status();
    return (snapshot = router.routeStats());
  };

  new Gauge({
    name: 'sf_router_active_connections',
    help: 'Open client connections per route port.',
    labelNames: ['port', 'sni'],
    registers: [registry],
    collect() {
      this.reset();
      // This collector runs first (registration order) and takes the snapshot the others read.
      for (const s of refresh()) this.set({ port: String(s.port), sni: s.sni }, s.active);
    },
  });
  for (const def of ROUTE_COUNTERS) {
    new Counter({
      name: def.name,
      help: def.help,
      labelNames: ['port', 'sni'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of snapshot) this.inc({ port: String(s.port), sni: s.sni }, s[def.field]);
      },
    });
  }
  new Counter({
    name: 'sf_router_refused_unknown_server_name_total',
    help: 'Clients on a shared TLS port whose server name matched no route.',
    labelNames: ['port'],
    registers: [registry],
    collect() {
      this.reset();
      for (const r of router.refusedUnknownServerName()) this.inc({ port: String(r.port) }, r.count);
    },
  });
  new Counter({
    name: 'sf_router_refused_global_limit_total',
    help: 'Clients refused because the router-wide connection limit (less other routes reservations) was reached.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(router.refusedByGlobalLimit());
    },
  });
  new Counter({
    name: 'sf_router_routes_refused_total',
    help: 'Pushed routes refused because a backend was the router itself, per route port.',
    labelNames: ['port', 'reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const r of router.refusedRouteCounts()) this.inc({ port: String(r.port), reason: 'self-loop' }, r.count);
    },
  });
  new Counter({
    name: 'sf_router_source_errors_total',
    help: 'Problems the route source reported, by code (SF_ERR_ROUTE_VERSION_BACKWARDS: a store that lost data was refused).',
    labelNames: ['code'],
    registers: [registry],
    collect() {
      this.reset();
      for (const e of router.sourceErrorCounts()) this.inc({ code: e.code }, e.count);
    },
  });
  for (const def of STATUS_GAUGES) {
    new Gauge({
      name: def.name,
      help: def.help,
      registers: [registry],
      collect() {
        this.set(def.value(status ?? router.status()));
      },
    });
  }
  return registry;
}
