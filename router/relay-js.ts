/**
 * The pure-Node relay. Per pair it allocates once (the pair object and its bound handlers);
 * per chunk it does a write and, only under backpressure, a pause. Node's own sockets reuse
 * libuv's read buffers, so there is no copy on the way through.
 */
import type { Socket } from 'node:net';
import { forwarderOf, resumeForwarded } from './read-forwarder';
import type { Relay, RelayCallbacks, RelayCloseReason, RelayedPair, RelayOptions } from './relay';
import { resetAndDestroy } from './socket-reset';

class JsRelayedPair implements RelayedPair {
  private closed = false;
  private openSockets = 2;
  private reason: RelayCloseReason = 'client-closed';
  private error: Error | undefined;

  constructor(
    private readonly client: Socket,
    private readonly backend: Socket,
    options: RelayOptions,
    private readonly callbacks: RelayCallbacks,
  ) {
    // A socket created with a ReadForwarder (read-forwarder.ts) writes its reads to the peer
    // from a reused buffer; other sockets go through 'data' events.
    const clientForwarder = forwarderOf(client);
    const backendForwarder = forwarderOf(backend);
    if (clientForwarder) clientForwarder.forwardTo(backend);
    else client.on('data', this.onClientData);
    if (backendForwarder) backendForwarder.forwardTo(client);
    else backend.on('data', this.onBackendData);
    this.resumeClient = clientForwarder ? () => resumeForwarded(client) : () => client.resume();
    this.resumeBackend = backendForwarder ? () => resumeForwarded(backend) : () => backend.resume();
    client.on('drain', this.onClientDrain);
    backend.on('drain', this.onBackendDrain);
    // Half-close: a FIN from one side becomes a FIN towards the other, the other direction
    // keeps flowing (allowHalfOpen is set on both sockets).
    client.on('end', this.onClientEnd);
    backend.on('end', this.onBackendEnd);
    client.on('error', this.onClientError);
    backend.on('error', this.onBackendError);
    client.on('close', this.onSocketClose);
    backend.on('close', this.onSocketClose);
    if (options.idleTimeoutMs > 0) {
      // Every relayed byte is a read on one socket and a write on the other, so the client
      // socket's inactivity timer covers both directions.
      client.setTimeout(options.idleTimeoutMs);
      client.on('timeout', this.onIdle);
    }
    this.resumeClient();
    this.resumeBackend();
  }

  get bytesIn(): number {
    return this.client.bytesRead;
  }

  get bytesOut(): number {
    return this.backend.bytesRead;
  }

  destroy(reset: boolean): void {
    if (this.closed) return;
    this.reason = 'killed';
    this.kill(reset);
  }

  private kill(reset: boolean): void {
    if (reset) {
      // RST with SO_LINGER 0 drops whatever is still queued towards the backend.
      resetAndDestroy(this.backend);
      resetAndDestroy(this.client);
    } else {
      this.backend.destroy();
      this.client.destroy();
    }
  }

  private readonly onClientData = (chunk: Buffer): void => {
    if (!this.backend.write(chunk)) this.client.pause();
  };

  private readonly onBackendData = (chunk: Buffer): void => {
    if (!this.client.write(chunk)) this.backend.pause();
  };

  private readonly resumeClient: () => void;
  private readonly resumeBackend: () => void;

  private readonly onClientDrain = (): void => {
    this.resumeBackend();
  };

  private readonly onBackendDrain = (): void => {
    this.resumeClient();
  };

  private readonly onClientEnd = (): void => {
    this.reason = 'client-closed';
    this.backend.end();
  };

  private readonly onBackendEnd = (): void => {
    this.reason = 'backend-closed';
    this.client.end();
  };

  private readonly onClientError = (err: Error): void => {
    this.fail('client-error', err);
  };

  private readonly onBackendError = (err: Error): void => {
    this.fail('backend-error', err);
  };

  private readonly onIdle = (): void => {
    this.fail('idle-timeout', undefined);
  };

  private fail(reason: RelayCloseReason, err: Error | undefined): void {
    if (this.closed || this.reason === 'killed') return;
    this.reason = reason;
    this.error = err;
    this.kill(false);
  }

  private readonly onSocketClose = (): void => {
    // A side that closed entirely (not a half-close) takes the other with it.
    if (--this.openSockets === 1) {
      if (!this.client.destroyed) this.client.destroySoon();
      if (!this.backend.destroyed) this.backend.destroySoon();
      return;
    }
    if (this.closed) return;
    this.closed = true;
    this.callbacks.onClose(this.reason, this.error);
  };
}

export function createJsRelay(): Relay {
  return {
    kind: 'js',
    start(client: Socket, backend: Socket, options: RelayOptions, callbacks: RelayCallbacks): RelayedPair {
      return new JsRelayedPair(client, backend, options, callbacks);
    },
  };
}
