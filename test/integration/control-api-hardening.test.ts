/**
 * Hardening against a live control: malformed requests to every endpoint, size limits, where a
 * token may travel, secrets in answers, `/health` with the store down, and the audit log.
 */
import { expect } from 'chai';
import pino from 'pino';
import { Writable } from 'node:stream';
import { isErrorCode } from '../../common/errors';
import type { EndpointInfo } from '../../control/api/http-server';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';
import { rawRequest, type RawResponse } from '../helpers/raw-http';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server';

const READ_TOKEN_NAME = 'reader';

/** The request target of an endpoint with every `:param` replaced by `value` (sent as-is). */
function target(e: EndpointInfo, value: string, query = ''): string {
  return e.pattern.replace(/:[A-Za-z_]+/g, value) + query;
}

function expectErrorBody(res: RawResponse, what: string): void {
  let body: { error?: { code?: unknown; message?: unknown } };
  try {
    body = JSON.parse(res.body) as typeof body;
  } catch {
    throw new Error(`${what}: ${res.status} with a non-JSON body: ${res.body.slice(0, 200)}`);
  }
  expect(isErrorCode(body.error?.code), `${what}: code ${String(body.error?.code)}`).to.equal(true);
  expect(body.error?.message, what).to.be.a('string');
}

describe('control API hardening', function () {
  this.timeout(120_000);
  let h: ControlHarness;
  let readToken: string;

  before(async () => {
    h = await startControlHarness();
    const created = await h.api<{ token: string }>('POST', '/v3/tokens', { name: READ_TOKEN_NAME, scopes: ['read'] });
    readToken = created.body.token;
  });
  after(async () => {
    await h.stop();
  });

  describe('malformed requests to every endpoint', function () {
    it('answers each with an error body and keeps serving /health', async function () {
      const endpoints = h.control.endpoints;
      expect(endpoints.length).to.be.at.least(20);
      const withParams = endpoints.filter((e) => e.pattern.includes('/:'));
      expect(withParams.length).to.be.at.least(8);

      const badParams = ['%E0%A4%A', '%', '%zz', '%00', '%C0%80', '%ED%A0%80', 'a%0Ab', 'x'.repeat(4000)];
      const badHeaders: Array<Array<[string, string]>> = [
        [['Authorization', 'Bearer']],
        [['Authorization', 'Basic YTpi']],
        [['Authorization', 'Bearer a b c']],
        [['Authorization', `Bearer ${'t'.repeat(8000)}`]],
        [['Authorization', 'Bearer \u00ff\u00fe']],
        [['Content-Type', 'text/plain\u00ff']],
      ];
      const badBodies: Array<string | Buffer> = [
        '{',
        Buffer.from([0xff, 0xfe, 0x7b, 0x00]),
        '['.repeat(100_000),
        `${'['.repeat(5_000)}${']'.repeat(5_000)}`,
        'null',
        '"x"',
        '1e999',
        '{"__proto__": {"admin": true}, "constructor": {"prototype": {}}}',
        `[${'{"port":1},'.repeat(2000)}{}]`,
      ];

      let sent = 0;
      const statuses = new Map<number, number>();
      const check = async (method: string, t: string, headers: Array<[string, string]>, body?: string | Buffer) => {
        const res = await rawRequest(h.control.port, { method, target: t, headers, body });
        sent++;
        const what = `${method} ${t.slice(0, 60)} ${JSON.stringify(headers).slice(0, 60)}`;
        expect(res, `${what}: connection closed without an answer`).to.not.equal(null);
        const r = res as RawResponse;
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        expect(r.status, `${what}: ${r.body.slice(0, 200)}`).to.be.within(200, 599);
        expect(r.status, `${what}: ${r.body.slice(0, 200)}`).to.not.equal(500);
        if (r.status >= 400) expectErrorBody(r, what);
      };

      // uWS's own parser drops a request whose Content-Length is not a number or whose header has
      // control characters, without an answer, and waits for a body longer than the one sent; none
      // of that may cost control anything.
      for (const e of endpoints) {
        const parserLevel: Array<[string, string]> = [
          ['Content-Length', 'abc'],
          ['Content-Length', '-1'],
          ['Content-Length', '1e3'],
          ['Content-Length', '99999999999999999999'],
          ['X-Weird', '\u0001\u0002'],
        ];
        const answers = await Promise.all(
          parserLevel.map((header) =>
            rawRequest(
              h.control.port,
              { method: e.method, target: target(e, 'x'), headers: [header], body: '{}', timeoutMs: 1000 },
              true,
            ).then((res) => [header, res] as const),
          ),
        );
        for (const [header, res] of answers) {
          sent++;
          if (res) {
            expect(res.status).to.be.within(400, 499);
            expectErrorBody(res, `${e.method} ${e.pattern} ${header.join(': ')}`);
          }
        }
      }
      for (const e of endpoints) {
        const method = e.method;
        const auths: Array<Array<[string, string]>> = [[], [['Authorization', `Bearer ${ADMIN_TOKEN}`]]];
        for (const auth of auths) {
          // Malformed path parameters, before and after authentication.
          if (e.pattern.includes('/:')) {
            for (const p of badParams) await check(method, target(e, p), auth, method === 'GET' ? undefined : '{}');
          }
          const plain = target(e, 'no-such-thing');
          for (const hdrs of badHeaders) {
            await check(method, plain, [...auth, ...hdrs], method === 'GET' ? undefined : '{}');
          }
          if (method !== 'GET') {
            for (const b of badBodies) {
              await check(method, plain, [...auth, ['Content-Type', 'application/json']], b);
            }
          }
        }
      }
      // Methods and paths nothing is registered for.
      for (const [m, t] of [
        ['PATCH', '/v3/cells/x'],
        ['OPTIONS', '/v3/info'],
        ['GET', '/%'],
        ['GET', '/v3/cells/%E0%A4%A/../../x'],
        ['DELETE', '/'],
      ]) {
        await check(m, t, []);
      }
      console.log(
        `      ${sent} malformed requests to ${endpoints.length} endpoints; statuses ${JSON.stringify(Object.fromEntries(statuses))}`,
      );
      const health = await rawRequest(h.control.port, { method: 'GET', target: '/health' });
      expect(health?.status).to.equal(200);
      expect(JSON.parse(health?.body ?? '{}')).to.include({ ok: true });
    });

    it('answers the issue reproducer with 400 naming the parameter', async function () {
      const res = await rawRequest(h.control.port, { method: 'GET', target: '/v3/cells/%E0%A4%A' });
      expect(res?.status).to.equal(400);
      const body = JSON.parse(res?.body ?? '') as { error: { code: string; field: string } };
      expect(body.error).to.include({ code: 'SF_ERR_INVALID_REQUEST', field: 'name' });
    });
  });

  describe('size limits', function () {
    it('answers an over-long URL with 414 and a large header block with 431, echoing neither', async function () {
      const marker = 'ECHOCHECK';
      const longUrl = `/v3/cells/${marker.repeat(1000)}`; // 9 KiB
      const res414 = await rawRequest(h.control.port, { method: 'GET', target: longUrl });
      expect(res414?.status).to.equal(414);
      expect(JSON.parse(res414?.body ?? '').error.code).to.equal('SF_ERR_URL_TOO_LONG');
      expect(res414?.raw).to.not.include(marker);

      const res100k = await rawRequest(h.control.port, { method: 'GET', target: `/x/${marker.repeat(11_000)}` });
      expect(res100k?.status).to.equal(414);
      expect(res100k?.raw).to.not.include(marker);

      const big: Array<[string, string]> = [
        ['X-A', marker.repeat(1000)],
        ['X-B', marker.repeat(1000)],
      ];
      const res431 = await rawRequest(h.control.port, { method: 'GET', target: '/v3/cells', headers: big });
      expect(res431?.status).to.equal(431);
      expect(JSON.parse(res431?.body ?? '').error.code).to.equal('SF_ERR_HEADERS_TOO_LARGE');
      expect(res431?.raw).to.not.include(marker);

      const write431 = await rawRequest(h.control.port, {
        method: 'POST',
        target: '/routing/v1/tcp_routes/create',
        headers: [['Authorization', `Bearer ${ADMIN_TOKEN}`], ...big],
        body: '[]',
      });
      expect(write431?.status).to.equal(431);
    });

    it('never echoes a long path in a 404', async function () {
      const marker = 'LONGPATH';
      const res = await rawRequest(h.control.port, { method: 'GET', target: `/nowhere/${marker.repeat(900)}` });
      expect(res?.status).to.equal(404);
      expect(res?.body.length).to.be.below(400);
      const res2 = await rawRequest(h.control.port, {
        method: 'GET',
        target: `/v3/service_instances/${marker.repeat(30)}`,
        headers: [['Authorization', `Bearer ${ADMIN_TOKEN}`]],
      });
      expect(res2?.status).to.equal(404);
      expect(res2?.body.length).to.be.below(600);
    });

    it('takes the URL limit from the options', async function () {
      const small = await startControlHarness({ api: { maxUrlBytes: 1024 } }, h.redis);
      try {
        const res = await rawRequest(small.control.port, { method: 'GET', target: `/v3/info?${'q'.repeat(1100)}` });
        expect(res?.status).to.equal(414);
        const ok = await rawRequest(small.control.port, { method: 'GET', target: `/health?${'q'.repeat(900)}` });
        expect(ok?.status).to.equal(200);
      } finally {
        await small.stop();
      }
    });
  });

  describe('access_token', function () {
    it('is refused on writes and plain reads, and writes nothing', async function () {
      const route = { router_group_guid: h.defaultGroup, port: 16510, backend_ip: '127.0.0.1', backend_port: 6379 };
      const write = await rawRequest(h.control.port, {
        method: 'POST',
        target: `/routing/v1/tcp_routes/create?access_token=${ADMIN_TOKEN}`,
        headers: [['Content-Type', 'application/json']],
        body: JSON.stringify([route]),
      });
      expect(write?.status).to.equal(401);
      expect(JSON.parse(write?.body ?? '').error.field).to.equal('access_token');
      const list = await h.api<Array<{ port: number }>>('GET', '/routing/v1/tcp_routes');
      expect(list.body.map((r) => r.port)).to.not.include(16510);

      for (const t of ['/v3/cells', '/v3/info', '/routing/v1/tcp_routes', '/v3/tokens']) {
        const res = await rawRequest(h.control.port, { method: 'GET', target: `${t}?access_token=${ADMIN_TOKEN}` });
        expect(res?.status, t).to.equal(401);
      }
      const del = await rawRequest(h.control.port, {
        method: 'DELETE',
        target: `/v3/tokens/${READ_TOKEN_NAME}?access_token=${ADMIN_TOKEN}`,
      });
      expect(del?.status).to.equal(401);
      expect((await h.api<Array<{ name: string }>>('GET', '/v3/tokens')).body.map((t) => t.name)).to.include(
        READ_TOKEN_NAME,
      );
    });

    it('is accepted on the GET event streams', async function () {
      const sse = await rawRequest(h.control.port, {
        method: 'GET',
        target: `/routing/v1/tcp_routes/events?access_token=${readToken}`,
      });
      expect(sse?.status).to.equal(200);
      const ws = await rawRequest(h.control.port, {
        method: 'GET',
        target: `/v3/events?access_token=${readToken}`,
        headers: [
          ['Upgrade', 'websocket'],
          ['Connection', 'Upgrade'],
          ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ=='],
          ['Sec-WebSocket-Version', '13'],
        ],
      });
      expect(ws?.status).to.equal(101);
    });
  });

  describe('audit log', function () {
    it('records who, what, when and the result of every write, never the token', async function () {
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _enc, cb) {
          lines.push(...chunk.toString().split('\n').filter(Boolean));
          cb();
        },
      });
      const a = await startControlHarness({ logger: pino({ level: 'info' }, sink), keyPrefix: 'audit-test:' }, h.redis);
      try {
        const reader = await a.api<{ token: string }>('POST', '/v3/tokens', { name: 'ro', scopes: ['read'] });
        const route = { router_group_guid: a.defaultGroup, port: 16520, backend_ip: '127.0.0.1', backend_port: 6379 };
        const t0 = Date.now();
        expect((await a.api('POST', '/routing/v1/tcp_routes/create', [route])).status).to.equal(201);
        // The routing API answers a missing scope with 401, as Cloud Foundry's does.
        expect((await a.api('POST', '/routing/v1/tcp_routes/delete', [route], reader.body.token)).status).to.equal(401);
        expect((await a.api('POST', '/routing/v1/tcp_routes/delete', [route], null)).status).to.equal(401);
        expect((await a.api('GET', '/v3/audit', undefined, reader.body.token)).status).to.equal(403);

        let entries: Array<Record<string, unknown>> = [];
        const deadline = Date.now() + 3000;
        while (entries.length < 3 && Date.now() < deadline) {
          entries = (await a.api<{ resources: Array<Record<string, unknown>> }>('GET', '/v3/audit')).body.resources;
        }
        // Newest first; the 401 is logged but not stored (anyone could flood the capped list).
        expect(entries.slice(0, 3).map((e) => [e.who, e.method, e.path, e.status, e.code])).to.deep.equal([
          ['ro', 'POST', '/routing/v1/tcp_routes/delete', 401, 'SF_ERR_FORBIDDEN'],
          ['admin', 'POST', '/routing/v1/tcp_routes/create', 201, null],
          ['admin', 'POST', '/v3/tokens', 201, null],
        ]);
        expect(Date.parse(entries[1].at as string)).to.be.within(t0 - 1000, Date.now() + 1000);
        expect(entries[0].token_id).to.match(/^[0-9a-f]{12}$/);
        expect(entries[1].token_id).to.not.equal(entries[0].token_id);

        const audited = lines.filter((l) => l.includes('"audit"')).map((l) => JSON.parse(l) as { audit: unknown });
        expect(audited.length).to.equal(4);
        expect(JSON.stringify(audited[3].audit)).to.include('"status":401');
        for (const l of lines) {
          expect(l).to.not.include(ADMIN_TOKEN);
          expect(l).to.not.include(reader.body.token);
        }
        const limited = await a.api<{ resources: unknown[] }>('GET', '/v3/audit?limit=1');
        expect(limited.body.resources).to.have.length(1);
        expect((await a.api('GET', '/v3/audit?limit=0')).status).to.equal(400);
      } finally {
        await a.stop();
      }
    });
  });
});

describe('control API secrets and health', function () {
  this.timeout(60_000);
  const PASSWORD = 'state-store-pass-7f3a9c';
  let redis: RedisServerHandle;
  let h: ControlHarness;

  before(async () => {
    redis = await startRedisServer(['--requirepass', PASSWORD]);
    h = await startControlHarness({ redisUrl: `redis://:${PASSWORD}@127.0.0.1:${redis.port}` }, redis);
  });
  after(async () => {
    await h.stop();
    await redis.stop();
  });

  it('never returns the state store password or the admin token in any GET body', async function () {
    const info = await h.api<{ redis_url: string }>('GET', '/v3/info', undefined, ADMIN_TOKEN);
    expect(info.status).to.equal(200);
    expect(info.body.redis_url).to.equal(`redis://127.0.0.1:${redis.port}`);
    await h.api('POST', '/v3/tokens', { name: 'ro', scopes: ['read'] });
    await h.api('POST', '/routing/v1/tcp_routes/create', [
      { router_group_guid: h.defaultGroup, port: 16530, backend_ip: '127.0.0.1', backend_port: 6379 },
    ]);
    let checked = 0;
    for (const e of h.control.endpoints.filter((x) => x.method === 'GET' && x.kind === 'json')) {
      for (const value of [h.defaultGroup, 'default', 'ro', 'x']) {
        const res = await rawRequest(h.control.port, {
          method: 'GET',
          target: target(e, encodeURIComponent(value)),
          headers: [['Authorization', `Bearer ${ADMIN_TOKEN}`]],
        });
        checked++;
        expect(res?.raw, e.pattern).to.not.include(PASSWORD);
        expect(res?.raw, e.pattern).to.not.include(ADMIN_TOKEN);
        if (!e.pattern.includes('/:')) break;
      }
    }
    expect(checked).to.be.at.least(15);
  });

  it('answers /health with 503 and ok:false while its Redis is down', async function () {
    const up = await rawRequest(h.control.port, { method: 'GET', target: '/health' });
    expect(up?.status).to.equal(200);
    expect(JSON.parse(up?.body ?? '')).to.deep.equal({ ok: true, redis: true, events: true });
    await redis.stop();
    const deadline = Date.now() + 5000;
    let down: RawResponse | null = null;
    while (Date.now() < deadline) {
      down = await rawRequest(h.control.port, { method: 'GET', target: '/health' });
      if (down?.status === 503) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(down?.status).to.equal(503);
    expect(JSON.parse(down?.body ?? '')).to.include({ ok: false, redis: false });
  });
});
