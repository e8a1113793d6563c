/**
 * Relays bytes between an accepted client socket and its connected backend socket.
 * Implementations: `relay-js.ts` (pure Node, always available) and `relay-native.ts`
 * (splice(2) off the JS thread, when the addon in native-bindings/ is built).
 * The router keeps every decision (accept, route, connect, fence); a relay only moves bytes.
 */
import type { Socket } from 'node:net';
import type { NativeAcceptor } from './native-accept';
import type { PortSteeringStatus } from '../native-bindings';

export type RelayCloseReason =
  'client-closed' | 'backend-closed' | 'client-error' | 'backend-error' | 'idle-timeout' | 'killed';

export interface RelayCallbacks {
  /** Called exactly once when both directions are finished or the pair was destroyed. */
  onClose(reason: RelayCloseReason, error: Error | undefined): void;
}

export interface RelayOptions {
  /** Close the pair when no byte moved in either direction for this long; 0 disables. */
  idleTimeoutMs: number;
}

export interface RelayedPair {
  /** Bytes read from the client (and written towards the backend) so far. */
  readonly bytesIn: number;
  /** Bytes read from the backend (and written towards the client) so far. */
  readonly bytesOut: number;
  /**
   * Destroys both sides at once. `reset` sends RST and discards unsent data, which fencing needs:
   * a fenced backend must never receive another byte.
   */
  destroy(reset: boolean): void;
}

export interface Relay {
  readonly kind: 'js' | 'native';
  /**
   * The native accept path (router/native-accept.ts): route ports that need no JavaScript per
   * connection are accepted, connected and relayed by the addon alone. Native relay only.
   */
  readonly acceptor?: NativeAcceptor;
  /** Threads moving bytes (the native relay's loop threads); the JS relay runs on the event loop. */
  readonly threads?: number;
  /** Ports opened through one listening socket (native relay only; native-bindings PortSteeringStatus). */
  steering?(): PortSteeringStatus;
  /** Starts moving bytes; both sockets are connected and owned by the relay from here on. */
  start(client: Socket, backend: Socket, options: RelayOptions, callbacks: RelayCallbacks): RelayedPair;
}
