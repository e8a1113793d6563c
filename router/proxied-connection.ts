/**
 * One client connection and the backend connection made for it, from accept to close.
 * It tries backends in the order its route's balancer gives, within the connect timeout, then
 * hands both sockets to the relay.
 */
import { connect as netConnect, type LookupFunction, type Server, type Socket } from 'node:net';
import { type Backend, type Route, backendUsesTls, clientTls, routeLimits } from '../protocol';
import { TLSSocket } from 'node:tls';
import { BACKEND_TLS_ERROR_CODE, connectBackendTls } from './backend-tls';
import { proxyHeader } from './proxy-protocol';
import { FORWARDERS_ENABLED, ReadForwarder, tagForwarder } from './read-forwarder';
import type { Relay, RelayCloseReason, RelayedPair } from './relay';
import type { RouteStats } from './route-stats';
import { SELF_LOOP_ERROR_CODE } from './self-address';
import { resetAndDestroy } from './socket-reset';

/** What the connection needs from the listener that accepted it. */
export interface ConnectionHost {
  readonly stats: RouteStats;
  readonly relay: Relay;
  readonly keepAliveMs: number;
  currentRoute(): Route;
  pickBackend(tried: ReadonlySet<string>): Backend | undefined;
  backendAcquired(backendId: string): void;
  backendReleased(backendId: string): void;
  connectionClosed(conn: ProxiedConnection, reason: RelayCloseReason | 'refused' | 'aborted'): void;
  /** True (and counted) when `backend` is one of the router's own listening addresses. */
  refusesAsSelfLoop(backend: Backend): boolean;
  /** The lookup to connect to `backend` with: one that refuses the router's own addresses, or Node's. */
  backendLookup(backend: Backend): LookupFunction | undefined;
  /** Counts a backend whose name resolved to one of the router's own addresses. */
  selfLoopDetected(backend: Backend, detail: string): void;
  /** A backend reached over TLS failed verification or declined TLS (already counted): why. */
  backendTlsFailed(message: string): void;
}

export class ProxiedConnection {
  /** The backend this connection uses or is connecting to, as the latest table describes it. */
  backend: Backend | undefined;
  /** The backend's epoch when the connection was made; a newer epoch in the table means fenced. */
  epoch = 0;
  private backendSocket: Socket | undefined;
  /** With TLS to the backend: the TCP socket under `backendSocket` (the same socket until TLS starts). */
  private backendTcp: Socket | undefined;
  /** The TCP connection to a TLS backend is up: a failure now is a TLS failure. */
  private backendTcpUp = false;
  private pair: RelayedPair | undefined;
  private readonly tried = new Set<string>();
  private connectTimer: NodeJS.Timeout | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  private done = false;
  private holdsBackend = false;

  constructor(
    readonly client: Socket,
    private readonly host: ConnectionHost,
    private readonly initial?: Buffer,
  ) {
    client.on('error', this.onEarlyClientError);
    client.on('close', this.onEarlyClientClose);
  }

  get bytesIn(): number {
    return this.pair ? this.pair.bytesIn : 0;
  }

  get bytesOut(): number {
    return this.pair ? this.pair.bytesOut : 0;
  }

  get draining(): boolean {
    return this.drainTimer !== undefined;
  }

  start(): void {
    this.connectNext();
  }

  /** Destroys both sides at once with RST; used for fencing. */
  kill(): void {
    if (this.done) return;
    if (this.pair) {
      this.pair.destroy(true);
      return;
    }
    if (this.backendSocket) resetAndDestroy(this.backendSocket);
    if (this.backendTcp && this.backendTcp !== this.backendSocket) this.backendTcp.destroy();
    resetAndDestroy(this.client);
    this.finish('aborted');
  }

  /** Lets the connection live on for `ms`, then closes it; 0 closes it now. */
  drain(ms: number, onExpire: () => void): void {
    if (this.done || this.drainTimer) return;
    const expire = (): void => {
      onExpire();
      if (this.pair) this.pair.destroy(false);
      else this.abort();
    };
    if (ms <= 0) {
      expire();
      return;
    }
    this.drainTimer = setTimeout(expire, ms);
    this.drainTimer.unref();
  }

  /** A backend that became eligible again takes back its draining connections. */
  cancelDrain(): void {
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = undefined;
  }

  /**
   * A PostgreSQL client that did not start TLS (an `optional` route) is relayed to the backend in
   * plaintext: over a re-encrypted leg the engine would offer SCRAM-SHA-256-PLUS, which libpq
   * refuses on a connection it knows to be plaintext ("server offered SCRAM-SHA-256-PLUS
   * authentication over a non-SSL connection"), the guard against a stripped TLS layer.
   */
  private plaintextPostgresClient(route: Route): boolean {
    return clientTls(route)?.startup === 'postgres' && !(this.client instanceof TLSSocket);
  }

  private connectNext(): void {
    let backend = this.host.pickBackend(this.tried);
    // A connection into the router itself would be accepted and connected again, without end
    //; such a backend is passed over before any socket exists.
    while (backend && this.host.refusesAsSelfLoop(backend)) {
      this.tried.add(backend.id);
      backend = this.host.pickBackend(this.tried);
    }
    if (!backend) {
      if (this.tried.size === 0) this.host.stats.refusedNoBackend++;
      this.client.destroy();
      this.finish('refused');
      return;
    }
    this.tried.add(backend.id);
    this.backend = backend;
    this.epoch = backend.epoch;
    this.host.backendAcquired(backend.id);
    this.holdsBackend = true;

    const route = this.host.currentRoute();
    const { connectTimeoutMs } = routeLimits(route);
    const lookup = this.host.backendLookup(backend);
    if (backendUsesTls(route, backend) && !this.plaintextPostgresClient(route)) {
      this.backendTcpUp = false;
      const tcp = connectBackendTls(route, backend, lookup, (tls) => {
        this.backendSocket = tls;
        tls.on('error', this.onConnectError);
        tls.once('secureConnect', this.onBackendConnect);
      });
      tcp.once('tcpConnect', () => (this.backendTcpUp = true));
      tcp.on('error', this.onConnectError);
      this.backendSocket = tcp;
      this.backendTcp = tcp;
    } else {
      const socket = this.connectPlain(backend, lookup);
      this.backendSocket = socket;
      this.backendTcp = undefined;
      socket.on('error', this.onConnectError);
      socket.once('connect', this.onBackendConnect);
    }
    this.connectTimer = setTimeout(this.onConnectTimeout, connectTimeoutMs);
  }

  /** The JS relay reads the backend through a reused buffer; the native relay takes the fd. */
  private connectPlain(backend: Backend, lookup: LookupFunction | undefined): Socket {
    const options = {
      host: backend.host,
      port: backend.port,
      allowHalfOpen: true,
      noDelay: true,
      ...(lookup ? { lookup } : {}),
    };
    if (this.host.relay.kind !== 'js' || !FORWARDERS_ENABLED) return netConnect(options);
    const forwarder = new ReadForwarder();
    return tagForwarder(netConnect({ ...options, onread: forwarder.onread }), forwarder);
  }

  private readonly onConnectTimeout = (): void => {
    this.host.stats.connectTimeouts++;
    this.retry();
  };

  private readonly onConnectError = (err: NodeJS.ErrnoException): void => {
    if (err.code === SELF_LOOP_ERROR_CODE && this.backend) this.host.selfLoopDetected(this.backend, err.message);
    // Fail closed: a backend whose certificate does not verify is passed over, never used in plaintext.
    else if (this.backendTcp && (this.backendTcpUp || err.code === BACKEND_TLS_ERROR_CODE)) {
      this.host.stats.backendTlsErrors++;
      this.host.backendTlsFailed(err.message);
    } else this.host.stats.connectErrors++;
    this.retry();
  };

  private retry(): void {
    clearTimeout(this.connectTimer);
    for (const socket of new Set([this.backendSocket, this.backendTcp])) {
      if (!socket) continue;
      socket.removeListener('error', this.onConnectError);
      socket.on('error', ignoreError);
      socket.destroy();
    }
    this.backendSocket = undefined;
    this.backendTcp = undefined;
    this.releaseBackend();
    if (!this.done) this.connectNext();
  }

  private readonly onBackendConnect = (): void => {
    clearTimeout(this.connectTimer);
    const socket = this.backendSocket!;
    socket.removeListener('error', this.onConnectError);
    if (this.backendTcp && this.backendTcp !== socket) {
      // The TLS socket reports its transport's errors from now on.
      this.backendTcp.removeListener('error', this.onConnectError);
      this.backendTcp.on('error', ignoreError);
    }
    this.client.removeListener('error', this.onEarlyClientError);
    this.client.removeListener('close', this.onEarlyClientClose);
    setSocketOptions(socket, this.host.keepAliveMs);
    const route = this.host.currentRoute();
    if (route.proxyProtocol) {
      socket.write(
        proxyHeader(route.proxyProtocol, {
          sourceAddress: this.client.remoteAddress ?? '',
          sourcePort: this.client.remotePort ?? 0,
          destinationAddress: this.client.localAddress ?? '',
          destinationPort: this.client.localPort ?? 0,
        }),
      );
    }
    if (this.initial) socket.write(this.initial);
    this.pair = this.host.relay.start(
      this.client,
      socket,
      { idleTimeoutMs: routeLimits(route).idleTimeoutMs },
      { onClose: this.onRelayClose },
    );
  };

  private readonly onRelayClose = (reason: RelayCloseReason): void => {
    if (reason === 'idle-timeout') this.host.stats.idleTimeouts++;
    this.host.stats.closedBytesIn += this.pair?.bytesIn ?? 0;
    this.host.stats.closedBytesOut += this.pair?.bytesOut ?? 0;
    this.finish(reason);
  };

  private readonly onEarlyClientError = (): void => {
    this.abort();
  };

  private readonly onEarlyClientClose = (): void => {
    this.abort();
  };

  /** The client went away (or a drain expired) before the relay started. */
  private abort(): void {
    if (this.done) return;
    clearTimeout(this.connectTimer);
    for (const socket of new Set([this.backendSocket, this.backendTcp])) {
      if (!socket) continue;
      socket.on('error', ignoreError);
      socket.destroy();
    }
    this.client.destroy();
    this.finish('aborted');
  }

  private releaseBackend(): void {
    if (this.holdsBackend && this.backend) this.host.backendReleased(this.backend.id);
    this.holdsBackend = false;
  }

  private finish(reason: RelayCloseReason | 'refused' | 'aborted'): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.connectTimer);
    this.cancelDrain();
    this.releaseBackend();
    this.host.connectionClosed(this, reason);
  }
}

function ignoreError(): void {
  // A socket being thrown away may still report its error; nothing is left to tell.
}

export function setSocketOptions(socket: Socket, keepAliveMs: number): void {
  socket.setNoDelay(true);
  if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
}

/** The methods a listening server's libuv TCP handle shares with a connected socket's. */
interface TcpHandleOptions {
  setNoDelay?(enable: boolean): number;
  setKeepAlive?(enable: boolean, initialDelaySeconds: number): number;
}

/**
 * Sets what `setSocketOptions` sets, once, on a listening socket. Linux copies a listener's
 * socket options (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE...) into every socket it accepts, so
 * its clients then need no setsockopt calls of their own: five per connection with Node's
 * keepalive, a measurable share of the cost of a short connection. Returns false when that could
 * not be done (another platform, a Node without the handle methods, an option refused); the
 * caller then sets the options on each accepted socket.
 */
export function setListenerSocketOptions(server: Server, keepAliveMs: number): boolean {
  if (process.platform !== 'linux') return false;
  const handle = (server as unknown as { _handle?: TcpHandleOptions | null })._handle;
  if (!handle?.setNoDelay || !handle.setKeepAlive) return false;
  if (handle.setNoDelay(true) !== 0) return false;
  // In seconds, as Socket.setKeepAlive passes it to the same handle method.
  return keepAliveMs <= 0 || handle.setKeepAlive(true, Math.floor(keepAliveMs / 1000)) === 0;
}
