/**
 * Plain per-route counters. The relay path bumps integers; `/metrics` turns them into
 * Prometheus text at scrape time, so metrics cost nothing per chunk.
 */
export interface RouteStats {
  port: number;
  /** The route's server names on a shared TLS port, '' otherwise. */
  sni: string;
  active: number;
  total: number;
  /** Bytes of connections already closed; live ones are read from their relays at scrape time. */
  closedBytesIn: number;
  closedBytesOut: number;
  connectErrors: number;
  connectTimeouts: number;
  refusedNoBackend: number;
  refusedMaxConnections: number;
  /** Backend attempts not made because the backend is the router itself. */
  refusedSelfLoop: number;
  killedFenced: number;
  killedDrained: number;
  idleTimeouts: number;
  /** TLS handshakes the router completed as the server (terminating routes). */
  tlsHandshakes: number;
  /** Clients whose TLS start failed: handshake error, no certificate loaded, timeout. */
  tlsHandshakeErrors: number;
  /** Clients refused because the route requires TLS and they spoke plaintext. */
  refusedPlaintext: number;
  /**
   * Backend connections refused because TLS to the backend failed: its certificate does not
   * verify against the route's backend CA, a PostgreSQL backend declined the SSLRequest, or the
   * CA file cannot be read. The router never falls back to plaintext.
   */
  backendTlsErrors: number;
}

export function newRouteStats(port: number, sni = ''): RouteStats {
  return {
    port,
    sni,
    active: 0,
    total: 0,
    closedBytesIn: 0,
    closedBytesOut: 0,
    connectErrors: 0,
    connectTimeouts: 0,
    refusedNoBackend: 0,
    refusedMaxConnections: 0,
    refusedSelfLoop: 0,
    killedFenced: 0,
    killedDrained: 0,
    idleTimeouts: 0,
    tlsHandshakes: 0,
    tlsHandshakeErrors: 0,
    refusedPlaintext: 0,
    backendTlsErrors: 0,
  };
}
