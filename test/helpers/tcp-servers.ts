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

export function startTcpServer(
  onConnection: (socket: Socket) => void,
  options: { allowHalfOpen?: boolean } = {},
): Promise<TestServer> {
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

/**
 * A port whose listen queue is full, so connects to it hang until they time out: the shape of
 * a backend host that went silent. Node always accepts, so a tiny python3 listener that never
 * calls accept() holds the port, and two parked connections fill its backlog of 0.
 */
export async function startBlackholeServer(): Promise<{ port: number; stop(): Promise<void> }> {
  const { spawn } = await import('node:child_process');
  const { connect } = await import('node:net');
  const child = spawn(
    'python3',
    [
      '-c',
      "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)",
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (c: Buffer) => resolve(Number(c.toString().trim())));
    child.once('error', reject);
  });
  const parked = [connect(port, '127.0.0.1'), connect(port, '127.0.0.1'), connect(port, '127.0.0.1')];
  for (const p of parked) p.on('error', () => undefined);
  await new Promise((r) => setTimeout(r, 100));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    port,
    async stop() {
      for (const p of parked) p.destroy();
      child.kill('SIGKILL');
      await exited;
    },
  };
}
