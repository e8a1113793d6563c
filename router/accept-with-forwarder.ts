/**
 * Accepts clients into sockets that read through a ReadForwarder (see read-forwarder.ts).
 * net.Server has no `onread` option, so this replaces the server handle's connection callback
 * with one that builds the socket the way Node's own does, plus `onread`. Where Node's internals
 * differ from what this expects, the server keeps Node's own callback.
 */
import { Socket, type Server } from 'node:net';
import { ReadForwarder, tagForwarder } from './read-forwarder';

interface ServerInternals {
  _handle?: { onconnection?: (err: number, clientHandle: unknown) => void } | null;
  _connections: number;
  allowHalfOpen: boolean;
  pauseOnConnect: boolean;
}

/**
 * After `server` listens: each accepted client gets a forwarder when `wanted()` says so (the JS
 * relay on a port that needs no peeking at the first bytes), a plain socket otherwise.
 */
export function acceptWithForwarders(server: Server, wanted: () => boolean): boolean {
  const internals = server as unknown as ServerInternals;
  const handle = internals._handle;
  const original = handle?.onconnection;
  if (!handle || typeof original !== 'function' || typeof internals._connections !== 'number') return false;
  handle.onconnection = function onconnection(this: unknown, err: number, clientHandle: unknown): void {
    if (err || !wanted()) {
      original.call(this, err, clientHandle);
      return;
    }
    const forwarder = new ReadForwarder();
    const socket = new Socket({
      handle: clientHandle,
      allowHalfOpen: internals.allowHalfOpen,
      pauseOnCreate: internals.pauseOnConnect,
      readable: true,
      writable: true,
      onread: forwarder.onread,
    } as ConstructorParameters<typeof Socket>[0]);
    tagForwarder(socket, forwarder);
    internals._connections++;
    (socket as Socket & { server: Server; _server: Server }).server = server;
    (socket as Socket & { _server: Server })._server = server;
    server.emit('connection', socket);
  };
  return true;
}
