import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { routeSourceFromControl } from '../../router/route-source-control';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';

/** Opens a WebSocket by hand (Node 20 has no client) and collects text frames from the server. */
function openWebSocket(port: number, path: string): Promise<{ socket: Socket; status: string; messages: string[] }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const messages: string[] = [];
    let buf = Buffer.alloc(0);
    let status = '';
    socket.on('error', reject);
    socket.on('connect', () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (!status) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        status = buf.subarray(0, buf.indexOf('\r\n')).toString();
        buf = buf.subarray(end + 4);
        resolve({ socket, status, messages });
      }
      // Server frames are unmasked; text frames with 7- or 16-bit lengths are all we expect.
      while (buf.length >= 2) {
        let len = buf[1] & 0x7f;
        let offset = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          offset = 4;
        }
        if (buf.length < offset + len) return;
        if ((buf[0] & 0x0f) === 1) messages.push(buf.subarray(offset, offset + len).toString());
        buf = buf.subarray(offset + len);
      }
    });
  });
}

describe('control event streams', function () {
  let h: ControlHarness;
  const route = () => ({ router_group_guid: h.defaultGroup, port: 16500, backend_ip: '127.0.0.1', backend_port: 6379 });

  before(async () => {
    h = await startControlHarness();
  });
  after(async () => {
    await h.stop();
  });

  it('streams Upsert and Delete as server-sent events', async function () {
    const abort = new AbortController();
    const res = await fetch(`${h.control.url}/routing/v1/tcp_routes/events`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      signal: abort.signal,
    });
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-type')).to.equal('text/event-stream');
    let text = '';
    const reading = (async () => {
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          text += Buffer.from(chunk).toString();
          if (text.includes('event: Delete')) break;
        }
      } catch {
        // aborted
      }
    })();
    await h.api('POST', '/routing/v1/tcp_routes/create', [route()]);
    await h.api('POST', '/routing/v1/tcp_routes/delete', [route()]);
    await Promise.race([reading, new Promise((r) => setTimeout(r, 3000))]);
    abort.abort();
    expect(text).to.match(/event: Upsert\ndata: \{[^\n]*"port":16500/);
    expect(text).to.include('event: Delete');
  });

  it('refuses an SSE client without a token', async function () {
    const res = await fetch(`${h.control.url}/routing/v1/tcp_routes/events`);
    expect(res.status).to.equal(401);
  });

  it('pushes the same events over the /v3/events WebSocket', async function () {
    const ws = await openWebSocket(h.control.port, `/v3/events?access_token=${ADMIN_TOKEN}`);
    try {
      expect(ws.status).to.include('101');
      await h.api('POST', '/routing/v1/tcp_routes/create', [route()]);
      const deadline = Date.now() + 3000;
      while (ws.messages.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const event = JSON.parse(ws.messages[0]) as { type: string; route: { port: number } };
      expect(event.type).to.equal('Upsert');
      expect(event.route.port).to.equal(16500);
    } finally {
      ws.socket.destroy();
      await h.api('POST', '/routing/v1/tcp_routes/delete', [route()]);
    }
  });

  it('refuses a WebSocket upgrade without a token with 401', async function () {
    const ws = await openWebSocket(h.control.port, '/v3/events');
    ws.socket.destroy();
    expect(ws.status).to.include('401');
  });

  it('tells a router started with --control where Redis is', async function () {
    const source = await routeSourceFromControl(h.control.url, ADMIN_TOKEN, { routerId: 'via-control' });
    let version = -1;
    await source.start({ onTable: (t) => (version = t.version), onError: () => undefined });
    await source.stop();
    expect(version).to.be.at.least(0);
    try {
      await routeSourceFromControl(h.control.url, null, { routerId: 'x' });
      expect.fail('should need a token');
    } catch (err) {
      expect((err as Error).message).to.include('bearer token');
    }
  });
});
