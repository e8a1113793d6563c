import { connect, type Socket } from 'node:net';

export function connectTo(port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host, allowHalfOpen: true });
    s.once('connect', () => {
      s.removeListener('error', reject);
      // Tests look at 'close'; a reset from the far side must not crash the test process.
      s.on('error', () => undefined);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Resolves with the first line a socket receives. */
export function readLine(socket: Socket, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`no line within ${timeoutMs} ms (got '${buf}')`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('latin1');
      const i = buf.indexOf('\n');
      if (i >= 0) {
        clearTimeout(timer);
        socket.removeListener('data', onData);
        resolve(buf.slice(0, i));
      }
    };
    socket.on('data', onData);
  });
}

/** Resolves when the socket is fully closed, with the ms it took from the call. */
export function closed(socket: Socket, timeoutMs = 5000): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    if (socket.destroyed) {
      resolve(0);
      return;
    }
    const timer = setTimeout(() => reject(new Error(`socket still open after ${timeoutMs} ms`)), timeoutMs);
    socket.on('error', () => undefined);
    // Our sockets allow half-open; a FIN from the far side is answered so the socket can close.
    // An unread socket may have seen the FIN already ('end' emitted before we listened).
    if (socket.readableEnded) socket.end();
    else socket.once('end', () => socket.end());
    socket.resume();
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(performance.now() - t0);
    });
  });
}

/** Connects and resolves with what the peer sent before closing (for refused/closed checks). */
export async function connectAndCollect(port: number, timeoutMs = 3000): Promise<{ data: string; closedMs: number }> {
  const s = await connectTo(port);
  let data = '';
  s.on('data', (c: Buffer) => (data += c.toString('latin1')));
  const closedMs = await closed(s, timeoutMs);
  return { data, closedMs };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it is true or the timeout passes. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 3000,
  what = 'condition',
  everyMs = 20,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await sleep(everyMs);
  }
}
