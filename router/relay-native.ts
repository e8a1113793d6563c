/**
 * The native relay: hands each connected pair to the addon in native-bindings/, which moves the
 * bytes with splice(2) on its own threads. JS keeps the pair's lifecycle: it can destroy the pair
 * at once (fencing), reads its byte counters, and hears when and why it ended.
 *
 * Ownership (docs/native-relay.md): at start the addon duplicates both descriptors, then the JS
 * sockets are destroyed, which closes only Node's descriptors. From then on the connection lives
 * in the addon alone; the JS sockets emit 'close' early and must not be used.
 */
import { constants as osConstants } from 'node:os';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import {
  loadNativeBindings,
  NativeCloseReason,
  socketFd,
  type NativeBindings,
  type NativePairHandle,
} from '../native-bindings';
import type { Relay, RelayCallbacks, RelayCloseReason, RelayedPair, RelayOptions } from './relay';
import { createJsRelay } from './relay-js';
import { NativeAcceptor } from './native-accept';

export interface NativeRelayOptions {
  /**
   * Loop threads moving bytes. One per router worker process is right when workers already
   * use every core.
   * @default 1 (or SF_NATIVE_RELAY_THREADS)
   */
  threads?: number;
  /**
   * Pipe capacity per direction in bytes, the most a pair buffers one way; 0 keeps the kernel's.
   * @default 0 (64 KiB on Linux)
   */
  pipeSize?: number;
}

export const DEFAULT_NATIVE_RELAY_OPTIONS: Required<NativeRelayOptions> = { threads: 1, pipeSize: 0 };

/** The Node internal a handover reads: whether the stream already saw end-of-stream. */
interface SocketInternals {
  _readableState?: { ended?: boolean };
}

/** One engine per process: the addon keeps a single set of loop threads. */
class NativeEngine {
  private nextId = 1;
  private active = 0;
  private readonly pairs = new Map<number, NativeRelayedPair>();

  constructor(
    readonly bindings: NativeBindings,
    options: Required<NativeRelayOptions>,
  ) {
    bindings.init(this.onNativeClose, options.threads, options.pipeSize);
  }

  register(pair: NativeRelayedPair): number {
    const id = this.nextId;
    // Ids travel through the addon as uint32; wrapping is safe long before 2^32 pairs coexist.
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    this.pairs.set(id, pair);
    if (this.active++ === 0) this.bindings.ref();
    return id;
  }

  unregister(id: number): void {
    if (!this.pairs.delete(id)) return;
    if (--this.active === 0) this.bindings.unref();
  }

  private readonly onNativeClose = (
    id: number,
    reason: number,
    errno: number,
    bytesIn: number,
    bytesOut: number,
  ): void => {
    this.pairs.get(id)?.ended(NativeCloseReason[reason] ?? 'killed', errno, bytesIn, bytesOut);
  };
}

let engine: NativeEngine | undefined;

class NativeRelayedPair implements RelayedPair {
  private handle: NativePairHandle | undefined;
  private closed = false;
  private finalIn = 0;
  private finalOut = 0;
  private readonly id: number;

  constructor(
    private readonly engine: NativeEngine,
    private readonly client: Socket,
    private readonly backend: Socket,
    private readonly options: RelayOptions,
    private readonly callbacks: RelayCallbacks,
  ) {
    this.id = engine.register(this);
    // A write still queued in Node (a PROXY protocol header under backpressure) must reach the
    // wire before the addon writes behind it, so the handover waits for Node's queues to empty.
    const waiting = [client, backend].filter((s) => s.writableLength > 0);
    if (waiting.length === 0) {
      this.handOver();
      return;
    }
    let left = waiting.length;
    for (const s of waiting) {
      s.once('drain', () => {
        if (--left === 0 && !this.closed) this.handOver();
      });
      s.once('error', this.onEarlyError);
    }
  }

  get bytesIn(): number {
    return this.handle !== undefined && !this.closed ? this.engine.bindings.bytesIn(this.handle) : this.finalIn;
  }

  get bytesOut(): number {
    return this.handle !== undefined && !this.closed ? this.engine.bindings.bytesOut(this.handle) : this.finalOut;
  }

  destroy(reset: boolean): void {
    if (this.closed) return;
    if (this.handle === undefined) {
      destroySocket(this.backend, reset);
      destroySocket(this.client, reset);
      this.finish('killed', undefined);
      return;
    }
    const handle = this.handle;
    const bytesIn = this.engine.bindings.bytesIn(handle);
    const bytesOut = this.engine.bindings.bytesOut(handle);
    // When the addon reports false the pair ended on its own a moment ago; its close event is
    // queued and will report the real reason.
    if (this.engine.bindings.destroy(handle, reset)) {
      this.finalIn = bytesIn;
      this.finalOut = bytesOut;
      this.finish('killed', undefined);
    }
  }

  /** The addon ended the pair (EOF both ways, an error, or the idle timeout). */
  ended(reason: RelayCloseReason, errno: number, bytesIn: number, bytesOut: number): void {
    if (this.closed) return;
    this.finalIn = bytesIn;
    this.finalOut = bytesOut;
    this.finish(reason, errno !== 0 ? errnoError(errno) : undefined);
  }

  private handOver(): void {
    const clientFd = socketFd(this.client);
    const backendFd = socketFd(this.backend);
    if (clientFd === undefined || backendFd === undefined) {
      // One side is already gone; nothing can be relayed.
      this.destroy(false);
      return;
    }
    try {
      this.handle = this.engine.bindings.start(
        this.id,
        clientFd,
        backendFd,
        this.options.idleTimeoutMs,
        takeBuffered(this.client),
        takeBuffered(this.backend),
        sawEof(this.client),
        sawEof(this.backend),
      );
    } catch (err) {
      // Out of descriptors, typically; the pair cannot be relayed and must not hang.
      destroySocket(this.backend, false);
      destroySocket(this.client, false);
      this.finish('client-error', err instanceof Error ? err : new Error(String(err)));
      return;
    }
    // The addon holds its own duplicates now; this closes only Node's descriptors (no FIN, no
    // RST: the connection stays open through the duplicates) and removes them from libuv's epoll.
    this.client.destroy();
    this.backend.destroy();
  }

  private readonly onEarlyError = (err: Error): void => {
    if (this.closed) return;
    destroySocket(this.backend, false);
    destroySocket(this.client, false);
    this.finish(this.client.errored === err ? 'client-error' : 'backend-error', err);
  };

  private finish(reason: RelayCloseReason, error: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    this.engine.unregister(this.id);
    // Asynchronous like the JS relay's, so that a caller of destroy() never re-enters itself.
    process.nextTick(() => this.callbacks.onClose(reason, error));
  }
}

function destroySocket(socket: Socket, reset: boolean): void {
  if (socket.destroyed) return;
  if (reset) socket.resetAndDestroy();
  else socket.destroy();
}

/** Bytes Node already read from the socket but nobody consumed; they go out first. */
function takeBuffered(socket: Socket): Buffer | null {
  if (socket.readableLength === 0) return null;
  const chunk: unknown = socket.read();
  return Buffer.isBuffer(chunk) ? chunk : null;
}

function sawEof(socket: Socket): boolean {
  return socket.readableEnded || (socket as unknown as SocketInternals)._readableState?.ended === true;
}

let errnoNames: Map<number, string> | undefined;

function errnoError(errno: number): Error {
  errnoNames ??= new Map(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));
  const code = errnoNames.get(errno) ?? `E${errno}`;
  return Object.assign(new Error(`relay socket error ${code}`), { code, errno });
}

/**
 * The native relay, or `undefined` when the addon is not built or loadable, or when
 * `SF_NATIVE_RELAY=off`. Options apply to the first call in a process; the engine is shared.
 */
export function createNativeRelay(options: NativeRelayOptions = {}): Relay | undefined {
  if (process.env.SF_NATIVE_RELAY === 'off') return undefined;
  if (process.platform !== 'linux') return undefined;
  const bindings = loadNativeBindings();
  if (bindings === undefined) return undefined;
  const envThreads = Number(process.env.SF_NATIVE_RELAY_THREADS);
  const envPipe = Number(process.env.SF_NATIVE_PIPE_SIZE);
  engine ??= new NativeEngine(bindings, {
    threads:
      options.threads ??
      (Number.isInteger(envThreads) && envThreads > 0 ? envThreads : DEFAULT_NATIVE_RELAY_OPTIONS.threads),
    pipeSize:
      options.pipeSize ?? (Number.isInteger(envPipe) && envPipe > 0 ? envPipe : DEFAULT_NATIVE_RELAY_OPTIONS.pipeSize),
  });
  const shared = engine;
  // One acceptor (connection budget) per relay, so per router. SF_NATIVE_ACCEPT=off keeps every
  // port on the JS accept path (for comparison and diagnosis).
  const acceptor = process.env.SF_NATIVE_ACCEPT !== 'off' ? new NativeAcceptor(bindings) : undefined;
  // TLS towards a backend is encrypted inside Node, so its bytes cannot be spliced.
  const jsRelay = createJsRelay();
  return {
    kind: 'native',
    ...(acceptor ? { acceptor } : {}),
    threads: shared.bindings.stats().threads,
    steering: () => shared.bindings.stats().steering,
    start(client: Socket, backend: Socket, relayOptions: RelayOptions, callbacks: RelayCallbacks): RelayedPair {
      if (client instanceof TLSSocket || backend instanceof TLSSocket)
        return jsRelay.start(client, backend, relayOptions, callbacks);
      return new NativeRelayedPair(shared, client, backend, relayOptions, callbacks);
    },
  };
}

/**
 * What ran, for `/health` and the benchmark: loop threads, pairs the addon holds, and per thread
 * the natively accepted clients it holds.
 */
export function nativeRelayStats(): ReturnType<NativeBindings['stats']> | undefined {
  return engine?.bindings.stats();
}
