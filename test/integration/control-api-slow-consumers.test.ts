/**
 * Event consumers that fall behind. Each stream's client either receives
 * every event in order or is disconnected with a reason (SSE: a final `event: resync`; WebSocket:
 * close code 1008 with a `resync` reason) — never silently shorted.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import { SLOW_CONSUMER_CLOSE_CODE } from '../../control/api/http-server';
import { keyLayout } from '../../protocol/keys';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';

interface StreamClient {
  socket: Socket;
  /** Bytes after the response head (SSE) or text messages (WebSocket). */
  text(): string;
  messages: string[];
  close: { code: number; reason: string } | null;
  ended: Promise<void>;
}

/** A raw client of the SSE stream or the WebSocket, so the test decides when it reads. */
function openClient(port: number, kind: 'sse' | 'ws'): Promise<StreamClient> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let head = true;
    let buf = Buffer.alloc(0);
    const chunks: Buffer[] = [];
    let endResolve: () => void = () => undefined;
    const client: StreamClient = {
      socket,
      text: () => Buffer.concat(chunks).toString('utf8'),
      messages: [],
      close: null,
      ended: new Promise<void>((r) => (endResolve = r)),
    };
    socket.on('error', reject);
    socket.on('close', () => endResolve());
    socket.on('connect', () => {
      const path = kind === 'sse' ? '/routing/v1/tcp_routes/events' : '/v3/events';
      const extra =
        kind === 'ws'
          ? `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n`
          : '';
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${ADMIN_TOKEN}\r\n${extra}\r\n`);
    });
    socket.on('data', (chunk: Buffer) => {
      if (head) {
        buf = Buffer.concat([buf, chunk]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = buf.subarray(0, buf.indexOf('\r\n')).toString();
        if (!/ (200|101) /.test(status)) reject(new Error(status));
        head = false;
        chunk = buf.subarray(end + 4);
        buf = Buffer.alloc(0);
        resolve(client);
      }
      if (kind === 'sse') {
        chunks.push(chunk);
        return;
      }
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (buf.length < 2) break;
        let len = buf[1] & 0x7f;
        let offset = 2;
        if (len === 126) {
          if (buf.length < 4) break;
          len = buf.readUInt16BE(2);
          offset = 4;
        } else if (len === 127) {
          if (buf.length < 10) break;
          len = Number(buf.readBigUInt64BE(2));
          offset = 10;
        }
        if (buf.length < offset + len) break;
        const opcode = buf[0] & 0x0f;
        const payload = buf.subarray(offset, offset + len);
        if (opcode === 1) client.messages.push(payload.toString());
        if (opcode === 8) {
          client.close = {
            code: payload.length >= 2 ? payload.readUInt16BE(0) : 1005,
            reason: payload.subarray(2).toString(),
          };
        }
        buf = buf.subarray(offset + len);
      }
    });
  });
}

/** Sequence numbers of received SSE events (the `seq` each published route carries). */
function sseSeqs(text: string): number[] {
  return [...text.matchAll(/event: Upsert\ndata: \{"seq":(\d+)/g)].map((m) => Number(m[1]));
}

function wsSeqs(messages: string[]): number[] {
  return messages.map((m) => (JSON.parse(m) as { route: { seq: number } }).route.seq);
}

function expectContiguous(seqs: number[]): void {
  seqs.forEach((s, i) => {
    if (s !== i) throw new Error(`event ${i} is seq ${s}: events were skipped`);
  });
}

describe('control event streams with slow consumers', function () {
  this.timeout(120_000);
  const LIMIT = 64 * 1024;
  let h: ControlHarness;
  let pub: Redis;
  const channel = keyLayout().routeEvents;

  /** Publishes `count` Upsert events in batches, each route padded to about `size` bytes. */
  const publish = async (count: number, size: number, batch = 100): Promise<void> => {
    const pad = 'p'.repeat(size);
    for (let i = 0; i < count; i += batch) {
      const events = [];
      for (let j = i; j < Math.min(count, i + batch); j++) events.push({ type: 'Upsert', route: { seq: j, pad } });
      await pub.publish(channel, JSON.stringify(events));
    }
  };

  beforeEach(async () => {
    h = await startControlHarness({ api: { eventBacklogLimitBytes: LIMIT } });
    pub = new Redis(h.redis.url);
  });
  afterEach(async () => {
    pub.disconnect();
    await h.stop();
  });

  it('ends a stalled SSE stream with event: resync after every event it did send', async function () {
    const client = await openClient(h.control.port, 'sse');
    client.socket.pause();
    const total = 2000;
    await publish(total, 10_000); // 20 MB: more than loopback socket buffers hold
    await new Promise((r) => setTimeout(r, 500));
    client.socket.resume();
    const deadline = Date.now() + 20_000;
    while (!client.text().endsWith('\r\n0\r\n\r\n') && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const text = client.text();
    const seqs = sseSeqs(text);
    console.log(`      SSE slow reader: ${seqs.length} of ${total} events, then resync`);
    expect(seqs.length).to.be.below(total);
    expectContiguous(seqs);
    // The resync event is the last chunk, and the response is complete (chunked terminator).
    expect(text).to.match(
      /\r\nevent: resync\ndata: \{"reason":"slow consumer","limit_bytes":65536\}\n\n\r\n0\r\n\r\n$/,
    );
    client.socket.destroy();
    // Control is fine and the stream's hub listener is gone.
    expect((await h.api('GET', '/health', undefined, null)).status).to.equal(200);
  });

  it('closes a stalled WebSocket with 1008 and a resync reason after every message it did send', async function () {
    const client = await openClient(h.control.port, 'ws');
    client.socket.pause();
    const total = 2000;
    await publish(total, 10_000);
    await new Promise((r) => setTimeout(r, 500));
    client.socket.resume();
    await Promise.race([client.ended, new Promise((r) => setTimeout(r, 20_000))]);
    const seqs = wsSeqs(client.messages);
    console.log(`      WebSocket slow reader: ${seqs.length} of ${total} messages, then close ${client.close?.code}`);
    expect(seqs.length).to.be.below(total);
    expectContiguous(seqs);
    expect(client.close?.code).to.equal(SLOW_CONSUMER_CLOSE_CODE);
    expect(client.close?.reason).to.match(/^resync: /);
  });

  it('delivers every one of 40,000 events to readers that keep up, or says why not', async function () {
    const sse = await openClient(h.control.port, 'sse');
    const ws = await openClient(h.control.port, 'ws');
    const total = 40_000;
    await publish(total, 20, 500);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const sseDone = sseSeqs(sse.text()).length === total || sse.text().includes('event: resync');
      const wsDone = ws.messages.length === total || ws.close !== null;
      if (sseDone && wsDone) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const sseGot = sseSeqs(sse.text());
    const wsGot = wsSeqs(ws.messages);
    console.log(
      `      fast readers: SSE ${sseGot.length}/${total}${sse.text().includes('event: resync') ? ' + resync' : ''}, ` +
        `WebSocket ${wsGot.length}/${total}${ws.close ? ` + close ${ws.close.code}` : ''}`,
    );
    expectContiguous(sseGot);
    expectContiguous(wsGot);
    if (sseGot.length < total) expect(sse.text()).to.include('event: resync');
    if (wsGot.length < total) expect(ws.close?.code).to.equal(SLOW_CONSUMER_CLOSE_CODE);
    sse.socket.destroy();
    ws.socket.destroy();
  });
});
