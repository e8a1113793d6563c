import { createHash, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import Redis from 'ioredis';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { freePort } from '../helpers/free-port';
import { startEchoServer, startTcpServer, type TestServer } from '../helpers/tcp-servers';
import { closed, connectTo, eventually, sleep } from '../helpers/tcp-client';
import type { RouteInput } from '../../router';

const run = promisify(execFile);

describe('router relay', function () {
  this.timeout(60_000);
  let redis: RedisServerHandle;
  let echo: TestServer;
  let harness: RouterHarness;
  let redisPort: number;
  let echoPort: number;

  before(async () => {
    redis = await startRedisServer();
    echo = await startEchoServer();
    redisPort = await freePort();
    echoPort = await freePort();
    harness = await startRouter({
      version: 1,
      routes: [
        { port: redisPort, backends: [{ id: 'redis', host: '127.0.0.1', port: redis.port }] },
        { port: echoPort, backends: [{ id: 'echo', host: '127.0.0.1', port: echo.port }] },
      ],
    });
  });

  /** Adds one route to the running table, as an operator editing the route file would. */
  async function addRoute(route: RouteInput): Promise<void> {
    const table = harness.router.currentTable();
    await harness.reload({ ...table, routes: [...table.routes, route] });
  }

  /** A backend that keeps its side open after the client's FIN, behind a new route port. */
  async function routeToHalfOpenBackend(
    onConnection: (s: Socket) => void,
  ): Promise<{ backend: TestServer; port: number }> {
    const backend = await startTcpServer(onConnection, { allowHalfOpen: true });
    const port = await freePort();
    await addRoute({ port, backends: [{ host: '127.0.0.1', port: backend.port }] });
    return { backend, port };
  }

  after(async () => {
    await harness?.stop();
    await echo?.stop();
    await redis?.stop();
  });

  it('serves ioredis commands through the route port', async () => {
    const client = new Redis({ port: redisPort, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      await client.set('greeting', 'hello');
      expect(await client.get('greeting')).to.equal('hello');
      const pipeline = client.pipeline();
      for (let i = 0; i < 1000; i++) pipeline.incr('counter');
      await pipeline.exec();
      expect(await client.get('counter')).to.equal('1000');
    } finally {
      client.disconnect();
    }
  });

  it('serves redis-cli through the route port', async () => {
    const { stdout } = await run('redis-cli', ['-p', String(redisPort), 'ping']);
    expect(stdout.trim()).to.equal('PONG');
    const set = await run('redis-cli', ['-p', String(redisPort), 'set', 'cli-key', 'cli-value']);
    expect(set.stdout.trim()).to.equal('OK');
    const direct = await run('redis-cli', ['-p', String(redis.port), 'get', 'cli-key']);
    expect(direct.stdout.trim()).to.equal('cli-value');
  });

  it('relays 100 MB byte-exact both ways through an echo backend', async () => {
    const total = 100 * 1024 * 1024;
    const block = randomBytes(1024 * 1024);
    const sent = createHash('sha256');
    const received = createHash('sha256');
    const socket = await connectTo(echoPort);
    let got = 0;
    const done = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        received.update(chunk);
        got += chunk.length;
        if (got === total) resolve();
      });
      socket.on('error', reject);
    });
    for (let i = 0; i < total / block.length; i++) {
      sent.update(block);
      if (!socket.write(block)) await new Promise((r) => socket.once('drain', r));
    }
    await done;
    socket.end();
    expect(got).to.equal(total);
    expect(received.digest('hex')).to.equal(sent.digest('hex'));
  });

  it('propagates a client half-close and still delivers the reply', async () => {
    // The backend waits for the client's FIN, then answers and closes: like a request/response
    // protocol framed by EOF.
    const { backend, port } = await routeToHalfOpenBackend((s) => {
      let body = '';
      s.on('data', (c: Buffer) => (body += c.toString()));
      s.on('end', () => s.end(`got ${body.length} bytes`));
    });
    try {
      const client = await connectTo(port);
      let reply = '';
      client.on('data', (c: Buffer) => (reply += c.toString()));
      client.end('0123456789');
      await closed(client);
      expect(reply).to.equal('got 10 bytes');
    } finally {
      await backend.stop();
    }
  });

  it('propagates a backend half-close while the client keeps sending', async () => {
    let receivedAfterFin = '';
    const { backend, port } = await routeToHalfOpenBackend((s) => {
      s.end('bye\n');
      s.on('data', (c: Buffer) => (receivedAfterFin += c.toString()));
    });
    try {
      const client = await connectTo(port);
      let reply = '';
      client.on('data', (c: Buffer) => (reply += c.toString()));
      await new Promise((r) => client.once('end', r));
      expect(reply).to.equal('bye\n');
      client.write('still here');
      await eventually(() => receivedAfterFin === 'still here', 3000, 'bytes after the backend FIN');
      client.end();
      await closed(client);
    } finally {
      await backend.stop();
    }
  });

  it('closes the client when the backend resets', async () => {
    const backend = await startTcpServer((s) => setTimeout(() => s.resetAndDestroy(), 50));
    const port = await freePort();
    await addRoute({ port, backends: [{ host: '127.0.0.1', port: backend.port }] });
    try {
      const client = await connectTo(port);
      expect(await closed(client, 3000)).to.be.lessThan(3000);
    } finally {
      await backend.stop();
    }
  });

  it('closes idle connections after the route idle timeout', async () => {
    const port = await freePort();
    await addRoute({ port, idleTimeoutMs: 300, backends: [{ host: '127.0.0.1', port: echo.port }] });
    const client = await connectTo(port);
    client.write('x');
    await sleep(100);
    const ms = await closed(client, 5000);
    expect(ms).to.be.within(100, 2000);
    await eventually(
      () => harness.router.routeStats().find((s) => s.port === port)!.idleTimeouts === 1,
      3000,
      'idle timeout counted',
    );
  });

  it('refuses clients beyond the route maxConnections', async () => {
    const port = await freePort();
    await addRoute({ port, maxConnections: 2, backends: [{ host: '127.0.0.1', port: echo.port }] });
    const a = await connectTo(port);
    const b = await connectTo(port);
    await eventually(() => harness.router.routeStats().find((s) => s.port === port)!.active === 2);
    const c = await connectTo(port);
    await closed(c, 3000);
    expect(harness.router.routeStats().find((s) => s.port === port)!.refusedMaxConnections).to.equal(1);
    a.destroy();
    b.destroy();
  });

  it('writes a PROXY v2 header ahead of the client bytes', async () => {
    let first = Buffer.alloc(0);
    const backend = await startTcpServer((s) => s.on('data', (c: Buffer) => (first = Buffer.concat([first, c]))));
    const port = await freePort();
    await addRoute({ port, proxyProtocol: 2, backends: [{ host: '127.0.0.1', port: backend.port }] });
    try {
      const client = await connectTo(port);
      client.write('PING\r\n');
      await eventually(() => first.length >= 28 + 6);
      expect(first.subarray(0, 12).toString('hex')).to.equal('0d0a0d0a000d0a515549540a');
      expect(first.readUInt16BE(24)).to.equal(client.localPort);
      expect(first.readUInt16BE(26)).to.equal(port);
      expect(first.subarray(28).toString()).to.equal('PING\r\n');
      client.destroy();
    } finally {
      await backend.stop();
    }
  });
});
