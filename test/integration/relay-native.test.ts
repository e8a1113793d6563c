import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { expect } from 'chai';
import type { Relay, RelayCloseReason, RelayedPair } from '../../router/relay';
import { createNativeRelay } from '../../router/relay-native';
import { selectRelay } from '../../router/relay-select';
import { startEchoServer, startTcpServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, eventually, sleep } from '../helpers/tcp-client';

interface RelayedConnection {
  pair: RelayedPair;
  /** Resolves with the reason the relay reports, once. */
  closed: Promise<{ reason: RelayCloseReason; error: Error | undefined }>;
}

/** A minimal router: every accepted client is relayed to `backendPort` through `relay`. */
interface RelayProxy {
  port: number;
  connections: RelayedConnection[];
  next(): Promise<RelayedConnection>;
  stop(): Promise<void>;
}

function startRelayProxy(
  relay: Relay,
  backendPort: number,
  options: { idleTimeoutMs?: number; pauseOnConnect?: boolean } = {},
): Promise<RelayProxy> {
  const connections: RelayedConnection[] = [];
  const waiters: Array<(c: RelayedConnection) => void> = [];
  const server: Server = createServer(
    { allowHalfOpen: true, pauseOnConnect: options.pauseOnConnect ?? true },
    (client) => {
      client.on('error', () => undefined);
      const backend = connect({ port: backendPort, host: '127.0.0.1', allowHalfOpen: true, noDelay: true }, () => {
        let resolveClosed!: (v: { reason: RelayCloseReason; error: Error | undefined }) => void;
        const closedPromise = new Promise<{ reason: RelayCloseReason; error: Error | undefined }>(
          (r) => (resolveClosed = r),
        );
        const pair = relay.start(
          client,
          backend,
          { idleTimeoutMs: options.idleTimeoutMs ?? 0 },
          { onClose: (reason, error) => resolveClosed({ reason, error }) },
        );
        const conn = { pair, closed: closedPromise };
        connections.push(conn);
        waiters.shift()?.(conn);
      });
      backend.on('error', () => undefined);
    },
  );
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      resolve({
        port: typeof addr === 'object' && addr ? addr.port : 0,
        connections,
        next: () => new Promise((r) => waiters.push(r)),
        stop: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}

/** Writes `total` pseudo-random bytes with backpressure, then ends; resolves with their SHA-256. */
async function sendBulk(socket: Socket, total: number): Promise<string> {
  const hash = createHash('sha256');
  const block = randomBytes(1 << 20);
  for (let sent = 0; sent < total;) {
    const n = Math.min(block.length, total - sent);
    // A rotated copy per write, so that repeated blocks cannot hide a reordering bug.
    const chunk = Buffer.concat([block.subarray(sent % 4096), block.subarray(0, sent % 4096)]).subarray(0, n);
    hash.update(chunk);
    sent += n;
    if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
  }
  socket.end();
  return hash.digest('hex');
}

function receiveAll(socket: Socket): Promise<{ hash: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  return new Promise((resolve, reject) => {
    socket.once('end', () => resolve({ hash: hash.digest('hex'), bytes }));
    socket.once('error', reject);
  });
}

/**
 * A half-open client that answers the far side's FIN with its own, so it closes however early the
 * FIN comes (Node emits 'end' on an unread, empty socket without waiting for a reader).
 */
async function connectClient(port: number): Promise<Socket> {
  const socket = await connectTo(port);
  socket.once('end', () => socket.end());
  return socket;
}

/** A backend that reads until the client's FIN, then answers `got <everything read>` and ends. */
function startAnsweringServer(): Promise<TestServer> {
  return startTcpServer(
    (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => s.end(`got ${Buffer.concat(chunks).toString()}`));
    },
    { allowHalfOpen: true },
  );
}

const relay = createNativeRelay();
const describeNative = relay ? describe : describe.skip;

describeNative(
  relay ? 'NativeRelay' : 'NativeRelay (skipped: the addon is not built; run scripts/build-native.sh)',
  function () {
    this.timeout(60_000);
    let echo: TestServer;
    let proxy: RelayProxy;

    before(async () => {
      echo = await startEchoServer();
      proxy = await startRelayProxy(relay!, echo.port);
    });

    after(async () => {
      await proxy?.stop();
      await echo?.stop();
    });

    describe('start', () => {
      it('relays 100 MB byte-exact both ways through an echo server', async () => {
        const total = 100 * 1024 * 1024;
        const client = await connectTo(proxy.port);
        const received = receiveAll(client);
        const conn = proxy.next();
        const sentHash = await sendBulk(client, total);
        const got = await received;
        expect(got.bytes).to.equal(total);
        expect(got.hash).to.equal(sentHash);
        const { reason } = await (await conn).closed;
        expect(reason).to.equal('client-closed');
        expect((await conn).pair.bytesIn).to.equal(total);
        expect((await conn).pair.bytesOut).to.equal(total);
      });

      it('relays many pairs concurrently, each byte-exact', async () => {
        const pairs = 200;
        const each = 256 * 1024;
        const results = await Promise.all(
          Array.from({ length: pairs }, async () => {
            const client = await connectTo(proxy.port);
            const received = receiveAll(client);
            const sent = await sendBulk(client, each);
            return { sent, got: await received };
          }),
        );
        for (const r of results) {
          expect(r.got.bytes).to.equal(each);
          expect(r.got.hash).to.equal(r.sent);
        }
      });

      it('keeps order and every byte when a stream alternates small messages and bulk', async () => {
        // Small writes are copied through the loop's buffer, bulk ones spliced through a pipe; each
        // switch between the two must keep the stream byte-exact.
        const client = await connectTo(proxy.port);
        const received = receiveAll(client);
        const hash = createHash('sha256');
        let total = 0;
        for (let i = 0; i < 40; i++) {
          const size = i % 4 === 3 ? 512 * 1024 + i : 1 + ((i * 37) % 900);
          const chunk = randomBytes(size);
          hash.update(chunk);
          total += size;
          if (!client.write(chunk)) await new Promise((r) => client.once('drain', r));
          // Gaps let the relay see the small messages one by one.
          if (i % 4 !== 3) await sleep(2);
        }
        client.end();
        const got = await received;
        expect(got.bytes).to.equal(total);
        expect(got.hash).to.equal(hash.digest('hex'));
      });

      it('holds back small messages a slow reader cannot take, and delivers them all later', async () => {
        // The backend does not read for a while: sends of copied messages fail part-way and the
        // rest must wait for the socket to drain, in order.
        let backendSocket: Socket | undefined;
        const backendHash = createHash('sha256');
        let backendBytes = 0;
        let backendEnded!: () => void;
        const backendDone = new Promise<void>((r) => (backendEnded = r));
        const backend = await startTcpServer((s) => {
          backendSocket = s;
          s.pause();
          s.on('data', (c: Buffer) => {
            backendHash.update(c);
            backendBytes += c.length;
          });
          s.on('end', () => backendEnded());
        });
        const p = await startRelayProxy(relay!, backend.port);
        try {
          const client = await connectTo(p.port);
          const conn = await p.next();
          const sentHash = createHash('sha256');
          let sent = 0;
          for (let i = 0; i < 2000; i++) {
            const chunk = randomBytes(3000 + (i % 7));
            sentHash.update(chunk);
            sent += chunk.length;
            if (!client.write(chunk)) await Promise.race([new Promise((r) => client.once('drain', r)), sleep(20)]);
          }
          await sleep(200);
          backendSocket!.resume();
          client.end();
          await backendDone;
          expect(backendBytes).to.equal(sent);
          expect(backendHash.digest('hex')).to.equal(sentHash.digest('hex'));
          expect((await conn.closed).reason).to.equal('client-closed');
          expect(conn.pair.bytesIn).to.equal(sent);
        } finally {
          await p.stop();
          await backend.stop();
        }
      });

      it('delivers a last message that arrives together with its FIN', async () => {
        const backend = await startAnsweringServer();
        const p = await startRelayProxy(relay!, backend.port);
        try {
          for (let i = 0; i < 20; i++) {
            const client = await connectTo(p.port);
            const received = new Promise<string>((resolve) => {
              let text = '';
              client.on('data', (c: Buffer) => (text += c.toString()));
              client.on('end', () => resolve(text));
            });
            const conn = await p.next();
            // Give the relay time to take the pair over, so the data and FIN reach its loop together.
            await sleep(5);
            client.end(`message ${i}`);
            expect(await received).to.equal(`got message ${i}`);
            expect((await conn.closed).reason).to.equal('client-closed');
          }
        } finally {
          await p.stop();
          await backend.stop();
        }
      });

      it('forwards bytes Node had already read before the handover', async () => {
        // Without pauseOnConnect Node reads the client's first bytes while the backend connects.
        const eager = await startRelayProxy(relay!, echo.port, { pauseOnConnect: false });
        try {
          const client = await connectTo(eager.port);
          client.write('early bytes');
          const received = receiveAll(client);
          await eager.next();
          client.end(' and late ones');
          expect((await received).bytes).to.equal('early bytes and late ones'.length);
        } finally {
          await eager.stop();
        }
      });
    });

    describe('half-close', () => {
      it('carries a client FIN to the backend while the backend still answers', async () => {
        const backend = await startAnsweringServer();
        const p = await startRelayProxy(relay!, backend.port);
        try {
          const client = await connectTo(p.port);
          const received = new Promise<string>((resolve) => {
            let text = '';
            client.on('data', (c: Buffer) => (text += c.toString()));
            client.on('end', () => resolve(text));
          });
          const conn = p.next();
          client.end('question');
          expect(await received).to.equal('got question');
          expect((await (await conn).closed).reason).to.equal('client-closed');
        } finally {
          await p.stop();
          await backend.stop();
        }
      });

      it('carries a backend FIN to the client while the client still sends', async () => {
        let backendGot = '';
        let backendEnded!: () => void;
        const backendDone = new Promise<void>((r) => (backendEnded = r));
        const backend = await startTcpServer(
          (s) => {
            s.end('bye');
            s.on('data', (c: Buffer) => (backendGot += c.toString()));
            s.on('end', () => backendEnded());
          },
          { allowHalfOpen: true },
        );
        const p = await startRelayProxy(relay!, backend.port);
        try {
          const client = connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true });
          const conn = p.next();
          const text = await new Promise<string>((resolve) => {
            let t = '';
            client.on('data', (c: Buffer) => (t += c.toString()));
            client.on('end', () => resolve(t));
          });
          expect(text).to.equal('bye');
          client.end('late words');
          await backendDone;
          expect(backendGot).to.equal('late words');
          expect((await (await conn).closed).reason).to.equal('backend-closed');
        } finally {
          await p.stop();
          await backend.stop();
        }
      });
    });

    describe('destroy', () => {
      it('with reset stops traffic at once: the backend receives nothing more', async () => {
        let backendBytes = 0;
        let backendSocket: Socket | undefined;
        let backendGone!: () => void;
        const backendClosed = new Promise<void>((r) => (backendGone = r));
        const backend = await startTcpServer((s) => {
          backendSocket = s;
          // A slow reader, so that the relay has data queued when it is destroyed.
          s.pause();
          s.on('data', (c: Buffer) => (backendBytes += c.length));
          s.on('close', () => backendGone());
        });
        const p = await startRelayProxy(relay!, backend.port);
        try {
          const client = await connectTo(p.port);
          client.on('error', () => undefined);
          const conn = await p.next();
          const block = Buffer.alloc(64 * 1024, 7);
          let writing = true;
          const pump = (async () => {
            while (writing && !client.destroyed) {
              if (!client.write(block)) await Promise.race([new Promise((r) => client.once('drain', r)), sleep(50)]);
            }
          })();
          await eventually(() => conn.pair.bytesIn > 1024 * 1024, 5000, 'relay moved 1 MB');
          conn.pair.destroy(true);
          const sentToBackend = conn.pair.bytesIn;
          backendSocket!.resume();
          await backendClosed;
          writing = false;
          await pump;
          // Everything the backend got was written before destroy returned; RST dropped the rest.
          expect(backendBytes).to.be.at.most(sentToBackend);
          expect(backendBytes).to.be.below(sentToBackend);
          expect((await conn.closed).reason).to.equal('killed');
          await closed(client, 2000);
        } finally {
          await p.stop();
          await backend.stop();
        }
      });

      it('without reset closes both sides and reports killed once', async () => {
        const client = await connectClient(proxy.port);
        const conn = await proxy.next();
        conn.pair.destroy(false);
        conn.pair.destroy(true);
        expect((await conn.closed).reason).to.equal('killed');
        await closed(client, 2000);
      });
    });

    describe('counters', () => {
      it('counts bytes in and out while the pair lives and after it closed', async () => {
        const backend = await startTcpServer((s) => s.on('data', (c: Buffer) => s.write(Buffer.concat([c, c]))), {
          allowHalfOpen: false,
        });
        const p = await startRelayProxy(relay!, backend.port);
        try {
          const client = await connectTo(p.port);
          const conn = await p.next();
          let got = 0;
          client.on('data', (c: Buffer) => (got += c.length));
          client.write(Buffer.alloc(1000, 1));
          await eventually(() => got === 2000, 3000, 'doubled answer');
          expect(conn.pair.bytesIn).to.equal(1000);
          expect(conn.pair.bytesOut).to.equal(2000);
          client.end();
          await conn.closed;
          expect(conn.pair.bytesIn).to.equal(1000);
          expect(conn.pair.bytesOut).to.equal(2000);
        } finally {
          await p.stop();
          await backend.stop();
        }
      });
    });

    describe('idle timeout', () => {
      it('closes a pair that moved no byte for idleTimeoutMs, and not before', async () => {
        const p = await startRelayProxy(relay!, echo.port, { idleTimeoutMs: 300 });
        try {
          const client = await connectClient(p.port);
          const conn = await p.next();
          const started = Date.now();
          // Traffic keeps it alive past the timeout.
          for (let i = 0; i < 4; i++) {
            client.write('x');
            await sleep(150);
          }
          const { reason } = await conn.closed;
          expect(reason).to.equal('idle-timeout');
          // The last byte moved at about 450 ms.
          expect(Date.now() - started).to.be.within(700, 2000);
          await closed(client, 2000);
        } finally {
          await p.stop();
        }
      });
    });

    describe('errors', () => {
      it('closes the client when the backend resets', async () => {
        const backend = await startTcpServer((s) => setTimeout(() => s.resetAndDestroy(), 50));
        const p = await startRelayProxy(relay!, backend.port);
        try {
          const client = await connectClient(p.port);
          client.on('error', () => undefined);
          const conn = await p.next();
          const { reason, error } = await conn.closed;
          expect(reason).to.equal('backend-error');
          expect((error as NodeJS.ErrnoException | undefined)?.code).to.equal('ECONNRESET');
          await closed(client, 2000);
        } finally {
          await p.stop();
          await backend.stop();
        }
      });
    });
  },
);

describe('createNativeRelay', () => {
  const saved = { relay: process.env.SF_NATIVE_RELAY, sfRelay: process.env.SF_RELAY };
  afterEach(() => {
    for (const [key, value] of [
      ['SF_NATIVE_RELAY', saved.relay],
      ['SF_RELAY', saved.sfRelay],
    ] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  });

  it('returns undefined when SF_NATIVE_RELAY=off, and the router then chooses the JS relay', () => {
    process.env.SF_NATIVE_RELAY = 'off';
    delete process.env.SF_RELAY;
    expect(createNativeRelay()).to.equal(undefined);
    expect(selectRelay('auto').kind).to.equal('js');
  });

  it('is what the router chooses on its own when the addon is built', function () {
    if (!relay) this.skip(); // nothing to choose without the addon; the test above covers that case
    delete process.env.SF_NATIVE_RELAY;
    delete process.env.SF_RELAY;
    expect(selectRelay('auto').kind).to.equal('native');
  });
});
