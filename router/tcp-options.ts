/**
 * TCP options Node does not expose, set on a connected socket through the addon. Each setter
 * returns false, changing nothing, when the addon is not available.
 */
import type { Socket } from 'node:net';
import { loadNativeBindings, socketFd } from '../native-bindings';

export interface KeepAliveProbes {
  /** Idle seconds before the first probe (TCP_KEEPIDLE); 0 keeps the system's. */
  idleSeconds: number;
  /** Seconds between probes (TCP_KEEPINTVL); 0 keeps the system's. */
  intervalSeconds: number;
  /** Unanswered probes before the connection is dropped (TCP_KEEPCNT); 0 keeps the system's. */
  count: number;
}

/**
 * TCP_USER_TIMEOUT (RFC 5482): how long sent data may stay unacknowledged before the kernel
 * drops the connection. Detects a dead peer within `timeoutMs` even while writing.
 */
export function setTcpUserTimeout(socket: Socket, timeoutMs: number): boolean {
  const bindings = loadNativeBindings();
  const fd = socketFd(socket);
  if (bindings === undefined || fd === undefined) return false;
  bindings.setTcpUserTimeout(fd, timeoutMs);
  return true;
}

/** Turns keepalive on with the given probe timing (Node only sets the idle time). */
export function setKeepAliveProbes(socket: Socket, probes: KeepAliveProbes): boolean {
  const bindings = loadNativeBindings();
  const fd = socketFd(socket);
  if (bindings === undefined || fd === undefined) return false;
  bindings.setKeepAlive(fd, true, probes.idleSeconds, probes.intervalSeconds, probes.count);
  return true;
}
