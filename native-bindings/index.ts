/**
 * Loader and typed surface of the optional native addon (`scripts/build-native.sh` builds it).
 * Only the router imports this; it always checks for `undefined` and falls back to pure JS.
 */
import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';

/** Opaque handle of one router's connection budget (and serving switch) inside the addon. */
/**
 * Opening many ports through one listening socket (docs/native-relay.md, "Opening many ports"): a
 * BPF sk_lookup program steers a table change's new ports to a listening socket of the relay when
 * the change opens at least `minPorts` ports.
 */
export interface PortSteeringStatus {
  /** `SF_NATIVE_STEER` is not `off`. */
  enabled: boolean;
  /** The program is loaded and attached (tried on the first change big enough to use it). */
  available: boolean;
  /** Why it is not available, once tried (no CAP_BPF, an old kernel); empty otherwise. */
  reason: string;
  minPorts: number;
  /** Ports steered now, and the listening sockets they are steered to. */
  ports: number;
  listeners: number;
}

export interface NativeBudgetHandle {
  readonly __nativeBudget: unique symbol;
}

/** Opaque handle of one relayed pair inside the addon. */
export interface NativePairHandle {
  readonly __nativePair: unique symbol;
}

/** Why the engine closed a pair; the numbers are the addon's `sf::CloseReason`. */
export const NativeCloseReason = [
  'client-closed',
  'backend-closed',
  'client-error',
  'backend-error',
  'idle-timeout',
  'killed',
] as const;

export type NativeCloseListener = (
  id: number,
  reason: number,
  errno: number,
  bytesIn: number,
  bytesOut: number,
) => void;

export interface NativeBindings {
  /** Starts the loop threads; `pipeSize` 0 keeps the kernel's pipe size. Call once per process. */
  init(onClose: NativeCloseListener, threads: number, pipeSize: number): void;
  /**
   * Relays duplicates of the two descriptors; the caller closes its own right after.
   * `pendingIn`/`pendingOut` are bytes already read from the client/backend, sent first.
   */
  start(
    id: number,
    clientFd: number,
    backendFd: number,
    idleTimeoutMs: number,
    pendingIn: Buffer | null,
    pendingOut: Buffer | null,
    clientEof: boolean,
    backendEof: boolean,
  ): NativePairHandle;
  /** Closes both sockets before returning; true when this call ended the pair. */
  destroy(pair: NativePairHandle, reset: boolean): boolean;
  bytesIn(pair: NativePairHandle): number;
  bytesOut(pair: NativePairHandle): number;
  ref(): void;
  unref(): void;
  /**
   * Loop threads, pairs they hold, and per thread the natively accepted clients it was given and
   * still holds (queued, connecting or relaying).
   */
  stats(): { threads: number; pairs: number; accepted: number[]; steering: PortSteeringStatus };
  /** A bound, listening, non-blocking socket for `server.listen({ fd })`. */
  listenTcp(host: string, port: number, backlog: number, reusePort: boolean, ipv6Only: boolean): number;
  setTcpUserTimeout(fd: number, timeoutMs: number): void;
  setKeepAlive(fd: number, enable: boolean, idleSeconds: number, intervalSeconds: number, count: number): void;
  /**
   * Grows the process's descriptor table once so that `count` more descriptors fit without the
   * kernel growing it again (capped at RLIMIT_NOFILE); absent from addons built before it.
   */
  reserveDescriptors?(count: number): void;

  // Native accept path (docs/native-relay.md): the addon owns the port, accepts, connects, relays.
  /** Receives batches of `[kind, owner, portId, port, ...]` quadruples (NativeAcceptEvent kinds). */
  initEvents(onEvents: (flat: number[]) => void): void;
  /** Whether the natively accepted ports keep the process alive (while any is open or draining). */
  refPorts(keep: boolean): void;
  /** One router's connection budget; its ports and JS path admit clients against it. Events name `owner`. */
  createBudget(owner: number): NativeBudgetHandle;
  /**
   * One table change in one call, in this order: the ports of `changedIds` take the first
   * `changedIds.length` routes (connections of fenced backends or older epochs are reset before it
   * returns), the ports of `retiredIds` stop accepting and drain, and each of `ports` at `host` opens
   * with the next route in place before its first client is accepted. Per route `header` holds
   * NATIVE_ROUTE_HEADER numbers (mode, connectTimeoutMs, idleTimeoutMs, drainTimeoutMs,
   * maxConnections or -1, backend count); the routes' backends follow one another in `ids` and
   * `numbers` (NATIVE_BACKEND_NUMBERS per backend: port, weight, epoch, state
   * (NATIVE_BACKEND_STATE), primary 1/0, index into `hosts`, which lists each host once). Returns
   * `[killed, id per new port]`, a negative errno where that port could not be opened (the others
   * are open).
   */
  applyPorts(
    budget: NativeBudgetHandle,
    host: string,
    changedIds: Float64Array,
    retiredIds: Float64Array,
    ports: Float64Array,
    backlog: number,
    reusePort: boolean,
    keepAliveMs: number,
    header: Float64Array,
    ids: string[],
    hosts: string[],
    numbers: Float64Array,
    tls?: NativeTlsRoute[],
    /** The fewest new ports this change steers to one listening socket (default: SF_NATIVE_STEER_MIN_PORTS or 256). */
    steerMinPorts?: number,
  ): Float64Array;
  /** Why the port's certificate (or its backend CA or client certificate) did not load, or undefined. */
  tlsError(portId: number): string | undefined;
  /** Why the port's last TLS start with a backend failed (verification, a declined SSLRequest), or undefined. */
  backendTlsFailure?(portId: number): string | undefined;
  /** What this build supports beyond the basics (`backend-tls`); absent in older builds. */
  readonly features?: readonly string[];
  /** Stops accepting now (closes the listening socket) and drains the port's connections. */
  retirePort(portId: number): boolean;
  /** Forgets a retired port with no connection left; false while some remain. */
  releasePort(portId: number): boolean;
  /** `releasePort` for each id: 1 where that port was forgotten. */
  releasePorts(portIds: Float64Array): Uint8Array;
  killAll(portId: number): number;
  /** Counters in NATIVE_PORT_STAT_FIELDS order, undefined for an unknown port. */
  portStats(portId: number): number[] | undefined;
  /** NATIVE_PORT_STAT_FIELDS.length counters per port, in one call; all -1 for an unknown port. */
  portStatsMany(portIds: Float64Array): Float64Array;
  activeFor(portId: number, backendId: string): number;
  setServing(budget: NativeBudgetHandle, serving: boolean): void;
  rebudget(
    budget: NativeBudgetHandle,
    limit: number,
    reserve: number,
    reservedBindings: number,
    jsReservedInUse: number,
  ): void;
  admit(budget: NativeBudgetHandle, ownActive: number, reserved: boolean): boolean;
  release(budget: NativeBudgetHandle, ownActiveAfter: number, reserved: boolean): void;
  /** `[active, refusedGlobal]` of the router-wide budget. */
  budgetStats(budget: NativeBudgetHandle): [number, number];
}

/**
 * A TLS route among `applyPorts`' routes (`index` into them). With `certFile` it terminates: the
 * relay threads run its preamble and TLS handshake with OpenSSL and relay the decrypted stream;
 * with `backend` they connect to the backends marked in `backend.tls` over TLS (docs/native-relay.md).
 */
export interface NativeTlsRoute {
  index: number;
  certFile?: string;
  keyFile?: string;
  clientCaFile?: string;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  alpn?: string[];
  startup: 'tls' | 'postgres';
  policy: 'required' | 'optional';
  /** A client whose preamble and handshake take longer is closed (counted as a handshake error). */
  handshakeTimeoutMs: number;
  backend?: NativeBackendTls;
}

/** TLS towards a route's backends (router/backend-tls.ts semantics). */
export interface NativeBackendTls {
  /** The CA backends' certificates must chain to; the system's CAs without it. */
  caFile?: string;
  /** The router's certificate and key for backends that ask for one (mTLS). */
  certFile?: string;
  keyFile?: string;
  /** The name to verify and send as SNI; without it the backend's address is verified. */
  serverName?: string;
  /** An SSLRequest goes first; only an `S` answer leads on to TLS. */
  postgres: boolean;
  /** Per backend of the route, in order: reached over TLS. */
  tls: boolean[];
}

/** The addon's `sf::NativeEvent::Kind`. */
export const NativeAcceptEvent = ['route-limit', 'global-limit', 'self-loop', 'backend-tls'] as const;

/** The addon's `sf::BackendSpec::State`. */
export const NATIVE_BACKEND_STATE = { active: 0, draining: 1, fenced: 2, selfLoop: 3 } as const;

/** Numbers per route and per backend in `applyPorts`. */
export const NATIVE_ROUTE_HEADER = 6;
export const NATIVE_BACKEND_NUMBERS = 6;

/** The addon's `sf::RouteMode`. */
export const NATIVE_ROUTE_MODE = { primary: 0, 'round-robin': 1, 'least-conn': 2 } as const;

/** The order of `portStats()`; the addon's `sf::PortCounters`. */
export const NATIVE_PORT_STAT_FIELDS = [
  'active',
  'total',
  'bytesIn',
  'bytesOut',
  'connectErrors',
  'connectTimeouts',
  'refusedNoBackend',
  'refusedMaxConnections',
  'refusedSelfLoop',
  'killedFenced',
  'killedDrained',
  'idleTimeouts',
  'tlsHandshakes',
  'tlsHandshakeErrors',
  'refusedPlaintext',
  'backendTlsErrors',
] as const;

/** Where the addon may be: next to this file's source, or beside the compiled copy in dist/. */
const CANDIDATES = [
  join(__dirname, 'build', 'Release', 'sf_native.node'),
  join(__dirname, '..', '..', 'native-bindings', 'build', 'Release', 'sf_native.node'),
];

let loaded: { bindings: NativeBindings | undefined; error: Error | undefined } | undefined;

/**
 * The addon, or `undefined` when it is not built, cannot load on this platform, or
 * `SF_NATIVE=off` disables every native feature.
 */
export function loadNativeBindings(): NativeBindings | undefined {
  if (process.env.SF_NATIVE === 'off') return undefined;
  if (loaded === undefined) loaded = tryLoad();
  return loaded.bindings;
}

/** Why the last load failed, for `/health` and the benchmark's report; undefined when it loaded. */
export function nativeLoadError(): Error | undefined {
  loadNativeBindings();
  return loaded?.error;
}

function tryLoad(): { bindings: NativeBindings | undefined; error: Error | undefined } {
  const path = CANDIDATES.find((p) => existsSync(p));
  if (path === undefined)
    return { bindings: undefined, error: new Error('native addon not built (run scripts/build-native.sh)') };
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return { bindings: require(path) as NativeBindings, error: undefined };
  } catch (err) {
    return { bindings: undefined, error: err instanceof Error ? err : new Error(String(err)) };
  }
}

/** The descriptor under a connected Node socket (libuv's TCP handle exposes it on Unix). */
export function socketFd(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return fd !== undefined && fd >= 0 ? fd : undefined;
}
