/**
 * Real TCP backends for router tests: an echo server that tags itself, and a generic server
 * whose connection handler the test provides. Every server is stopped by `stop()`.
 */
import { createServer, type Server, type Socket } from 'node:net';

export interface TestServer {
  port: number;
  /** Live sockets accepted by this server. */
  sockets: Set<Socket>;
  /** Total connections accepted. */
  accepted: number;
  /** Total bytes received from all clients. */
  bytesReceived: number;
  stop(): Promise<void>;
}

export function startTcpServer(onConnection: (socket: Socket) => void, options: { allowHalfOpen?: boolean } = {}): Promise<TestServer> {
  const sockets = new Set<Socket>();
  const handle: TestServer = {
    port: 0,
    sockets,
    accepted: 0,
    bytesReceived: 0,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer({ allowHalfOpen: options.allowHalfOpen ?? false }, (socket) => {
    handle.accepted++;
    sockets.add(socket);
    socket.on('data', (chunk: Buffer) => {
      handle.bytesReceived += chunk.length;
    });
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      handle.port = typeof addr === 'object' && addr ? addr.port : 0;
      resolve(handle);
    });
  });
}

/** Echoes every byte back; with allowHalfOpen it answers a client's FIN with its own. */
export function startEchoServer(): Promise<TestServer> {
  return startTcpServer((socket) => socket.pipe(socket));
}

/** Sends `name\n` on connect, then echoes: tells a test which backend it reached. */
export function startNamedServer(name: string): Promise<TestServer> {
  return startTcpServer((socket) => {
    socket.write(`${name}\n`);
    socket.pipe(socket);
  });
}
