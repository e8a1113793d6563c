/**
 * Destroys a socket with a TCP reset (SO_LINGER 0), which fencing needs: data still queued is
 * dropped instead of delivered. Node's `resetAndDestroy` works on TCP handles only; a TLS socket
 * the router terminated wraps the accepted TCP socket, which is reset instead.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

export function resetAndDestroy(socket: Socket): void {
  if (socket instanceof TLSSocket) {
    // `_parent` is the net.Socket a server-side TLSSocket was made over (router/client-tls.ts);
    // a TLS socket from tls.connect has none and can only be destroyed (FIN, not RST).
    const parent = (socket as TLSSocket & { _parent?: Socket | null })._parent;
    if (parent && !parent.destroyed) parent.resetAndDestroy();
    socket.destroy();
    return;
  }
  socket.resetAndDestroy();
}
