/**
 * Cloud Foundry routing-api compatibility: every request below is the exact body CF's Go client
 * (`code.cloudfoundry.org/routing-api`, client.go) sends for the call named in the test, as Go's
 * encoding/json writes `models.RouterGroup` and `models.TcpRouteMapping` (field order, zero values,
 * `omitempty`), with the `Authorization: bearer …` header it sets and a UAA-style JWT. Each answer
 * is checked against the status and shape the peer gives (handlers/*.go). The last test runs a
 * consumer built like cf-tcp-router's updater (bulk sync while caching events, then events applied
 * by `SucceededBy`) and checks it converges on the table our routers read.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { issueDevJwt } from '../../control/api/jwt-issue';
import { startControlHarness, type ControlHarness } from '../helpers/control-harness';

const ISSUER = 'https://uaa.compat.test/oauth/token';
const SECRET = 'compat-suite-hs256-secret-0123456789abcdef';
const ALL_SCOPES = [
  'routing.routes.read',
  'routing.routes.write',
  'routing.router_groups.read',
  'routing.router_groups.write',
];

interface CfRouterGroup {
  guid: string;
  name: string;
  type: string;
  reservable_ports: string;
}

interface CfTag {
  guid: string;
  index: number;
}

interface CfMapping {
  router_group_guid: string;
  backend_port: number;
  backend_tls_port: number;
  backend_ip: string;
  backend_sni_hostname?: string;
  instance_id: string;
  port: number;
  modification_tag: CfTag;
  ttl?: number;
  isolation_segment: string;
  terminate_frontend_tls?: boolean;
  alpns?: string;
}

/** routing-api's `Error`: what the Go client's transformResponseError decodes. */
interface CfError {
  name: string;
  message: string;
}

/**
 * What Go's json.Marshal writes for a `models.TcpRouteMapping` built by NewTcpRouteMapping: every
 * field without `omitempty` always (zero values included), the `omitempty` ones only when set.
 */
function goMapping(m: {
  group: string;
  port: number;
  ip: string;
  backendPort: number;
  tlsPort?: number;
  instanceId?: string;
  sni?: string;
  ttl?: number | null;
  segment?: string;
  terminateTls?: boolean;
  alpns?: string;
}): string {
  const parts = [
    `"router_group_guid":${JSON.stringify(m.group)}`,
    `"backend_port":${m.backendPort}`,
    `"backend_tls_port":${m.tlsPort ?? 0}`,
    `"backend_ip":${JSON.stringify(m.ip)}`,
    ...(m.sni !== undefined ? [`"backend_sni_hostname":${JSON.stringify(m.sni)}`] : []),
    `"instance_id":${JSON.stringify(m.instanceId ?? '')}`,
    `"port":${m.port}`,
    `"modification_tag":{"guid":"","index":0}`,
    ...(m.ttl !== null ? [`"ttl":${m.ttl ?? 120}`] : []),
    `"isolation_segment":${JSON.stringify(m.segment ?? '')}`,
    ...(m.terminateTls ? [`"terminate_frontend_tls":true`] : []),
    ...(m.alpns ? [`"alpns":${JSON.stringify(m.alpns)}`] : []),
  ];
  return `{${parts.join(',')}}`;
}

function goMappingList(group: string): string {
  return `[${goMapping({ group, port: 23001, ip: '10.0.0.2', backendPort: 7000 })}]`;
}

interface SseEvent {
  id: string;
  event: string;
  data: string;
}

/** An SSE subscription as go-sse makes it; events are collected as they come. */
async function subscribe(url: string, token: string): Promise<{ events: SseEvent[]; close(): void; status: number }> {
  const abort = new AbortController();
  const res = await fetch(url, { headers: { authorization: `bearer ${token}` }, signal: abort.signal });
  const events: SseEvent[] = [];
  if (res.ok && res.body) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    void (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          buf += decoder.decode(value, { stream: true });
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const frame = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const ev: SseEvent = { id: '', event: '', data: '' };
            for (const line of frame.split('\n')) {
              const m = /^(id|event|data): ?(.*)$/.exec(line);
              if (m) ev[m[1] as keyof SseEvent] = m[2];
            }
            if (ev.event) events.push(ev);
          }
        }
      } catch {
        // Aborted by close().
      }
    })();
  }
  return { events, status: res.status, close: () => abort.abort() };
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Cloud Foundry routing-api compatibility', function () {
  this.timeout(60_000);
  let h: ControlHarness;
  let dir: string;
  let jwt: string;

  /** A request as the Go client sends it: raw JSON text, lowercase `bearer`, Content-Type set. */
  const go = async <T>(method: string, path: string, body?: string, token = jwt) => {
    const res = await fetch(`${h.control.url}${path}`, {
      method,
      headers: { authorization: `bearer ${token}`, 'content-type': 'application/json' },
      body,
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, text, body: (text ? JSON.parse(text) : null) as T };
  };
  const token = (scopes: string[], ttlSeconds = 600) =>
    issueDevJwt({
      secret: new TextEncoder().encode(SECRET),
      issuer: ISSUER,
      scopes,
      ttlSeconds,
      clientId: 'tcp_emitter',
    });
  const expectCfError = (res: { status: number; body: unknown }, status: number, name: string) => {
    expect(res.status, JSON.stringify(res.body)).to.equal(status);
    expect(res.body).to.include.keys('name', 'message');
    expect((res.body as CfError).name).to.equal(name);
  };

  before(async function () {
    dir = mkdtempSync(join(tmpdir(), 'sf-cf-compat-'));
    const secretFile = join(dir, 'secret');
    writeFileSync(secretFile, SECRET, { mode: 0o600 });
    h = await startControlHarness({ jwt: { hs256SecretFile: secretFile, issuer: ISSUER } });
    jwt = await token(ALL_SCOPES);
  });
  after(async function () {
    await h.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  describe('router groups', function () {
    let group: CfRouterGroup;

    it('CreateRouterGroup: 201 with the group, and 200 with the same group when it exists', async function () {
      const body = '{"guid":"","name":"cf-tcp","type":"tcp","reservable_ports":"20000-20099"}';
      const created = await go<CfRouterGroup>('POST', '/routing/v1/router_groups', body);
      expect(created.status).to.equal(201);
      expect(created.body).to.have.all.keys('guid', 'name', 'type', 'reservable_ports');
      expect(created.body).to.include({ name: 'cf-tcp', type: 'tcp', reservable_ports: '20000-20099' });
      group = created.body;
      const again = await go<CfRouterGroup>('POST', '/routing/v1/router_groups', body);
      expect(again.status).to.equal(200);
      expect(again.body).to.deep.equal(group);
    });

    it('CreateRouterGroup of type http: stored without ports', async function () {
      const res = await go<CfRouterGroup>(
        'POST',
        '/routing/v1/router_groups',
        '{"guid":"","name":"cf-http","type":"http","reservable_ports":""}',
      );
      expect(res.status).to.equal(201);
      expect(res.body).to.include({ type: 'http', reservable_ports: '' });
      const tcpRoute = goMapping({ group: res.body.guid, port: 20050, ip: '10.0.0.1', backendPort: 8080 });
      expectCfError(await go('POST', '/routing/v1/tcp_routes/create', `[${tcpRoute}]`), 400, 'ProcessRequestError');
    });

    it('CreateRouterGroup without a type, or an empty one, is 400 as in CF', async function () {
      for (const body of [
        '{"guid":"","name":"no-type","reservable_ports":"24000"}',
        '{"guid":"","name":"no-type","type":"","reservable_ports":"24000"}',
      ]) {
        expectCfError(await go('POST', '/routing/v1/router_groups', body), 400, 'ProcessRequestError');
      }
      expect((await go('GET', '/routing/v1/router_groups?name=no-type')).status).to.equal(404);
    });

    it("refuses ports by CF's rules with 400 ProcessRequestError", async function () {
      for (const ports of ['80-2000', '21000-21100,21050', '']) {
        const body = `{"guid":"","name":"bad-ports","type":"tcp","reservable_ports":${JSON.stringify(ports)}}`;
        expectCfError(await go('POST', '/routing/v1/router_groups', body), 400, 'ProcessRequestError');
      }
    });

    it('RouterGroups and RouterGroupWithName: 200 with an array; an unknown name is 404', async function () {
      const all = await go<CfRouterGroup[]>('GET', '/routing/v1/router_groups');
      expect(all.status).to.equal(200);
      expect(all.body.map((g) => g.name)).to.include.members(['default', 'cf-tcp', 'cf-http']);
      const named = await go<CfRouterGroup[]>('GET', '/routing/v1/router_groups?name=cf-tcp');
      expect(named.status).to.equal(200);
      expect(named.body).to.deep.equal([group]);
      expectCfError(await go('GET', '/routing/v1/router_groups?name=nope'), 404, 'ResourceNotFoundError');
    });

    it('UpdateRouterGroup: the whole group is sent, only reservable_ports is read', async function () {
      const body = `{"guid":"${group.guid}","name":"renamed","type":"http","reservable_ports":"20000-20199"}`;
      const res = await go<CfRouterGroup>('PUT', `/routing/v1/router_groups/${group.guid}`, body);
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.equal({ ...group, reservable_ports: '20000-20199' });
      // CF's warning, URL-encoded as Go's url.QueryEscape writes it.
      const warning = res.headers.get('x-cf-warnings') ?? '';
      expect(warning).to.match(
        /^Warning%3A\+if\+routes\+are\+registered\+for\+ports\+that\+are\+not\+in\+the\+new\+range/,
      );
      expect(decodeURIComponent(warning.replace(/\+/g, ' '))).to.match(/becoming inaccessible\.$/);
      group = res.body;
    });

    it('DeleteRouterGroup: 204, then 404 for the same guid', async function () {
      const created = await go<CfRouterGroup>(
        'POST',
        '/routing/v1/router_groups',
        '{"guid":"","name":"cf-gone","type":"tcp","reservable_ports":"22000"}',
      );
      expect((await go('DELETE', `/routing/v1/router_groups/${created.body.guid}`)).status).to.equal(204);
      expectCfError(await go('DELETE', `/routing/v1/router_groups/${created.body.guid}`), 404, 'ResourceNotFoundError');
    });
  });

  describe('tcp routes', function () {
    let guid: string;
    before(async function () {
      const groups = await go<CfRouterGroup[]>('GET', '/routing/v1/router_groups?name=cf-tcp');
      guid = groups.body[0].guid;
    });
    afterEach(async function () {
      const all = await go<CfMapping[]>('GET', '/routing/v1/tcp_routes');
      if (all.body.length) await go('POST', '/routing/v1/tcp_routes/delete', JSON.stringify(all.body));
    });

    it('UpsertTcpRouteMappings: 201; TcpRouteMappings returns every CF field with a server tag', async function () {
      const body = `[${goMapping({
        group: guid,
        port: 20001,
        ip: '10.1.1.12',
        backendPort: 60000,
        tlsPort: 60001,
        instanceId: '91860bfe-ecff-480d-8df4-0d1eb0295b04',
      })},${goMapping({
        group: guid,
        port: 20002,
        ip: '10.0.8.5',
        backendPort: 8888,
        sni: 'db.example.com',
        terminateTls: true,
        alpns: 'h2,http/1.1',
        segment: 'is1',
      })}]`;
      const created = await go('POST', '/routing/v1/tcp_routes/create', body);
      expect(created.status).to.equal(201);
      // CF's handler writes the status only.
      expect(created.text).to.equal('');
      const list = await go<CfMapping[]>('GET', '/routing/v1/tcp_routes');
      expect(list.status).to.equal(200);
      const [a, b] = list.body.sort((x, y) => x.port - y.port);
      expect(a).to.include({
        router_group_guid: guid,
        port: 20001,
        backend_ip: '10.1.1.12',
        backend_port: 60000,
        backend_tls_port: 60001,
        instance_id: '91860bfe-ecff-480d-8df4-0d1eb0295b04',
        ttl: 120,
        isolation_segment: '',
      });
      expect(a).to.not.have.any.keys('backend_sni_hostname', 'terminate_frontend_tls', 'alpns');
      expect(a.modification_tag.guid).to.match(/^[0-9a-f-]{36}$/);
      expect(a.modification_tag.index).to.equal(0);
      expect(b).to.include({
        backend_sni_hostname: 'db.example.com',
        terminate_frontend_tls: true,
        alpns: 'h2,http/1.1',
        isolation_segment: 'is1',
        backend_tls_port: 0,
      });
    });

    it("CF's record key: another backend TLS port, SNI host name or mTLS makes another record", async function () {
      const base = { group: guid, port: 20030, ip: '10.0.3.1', backendPort: 7000 };
      const variants = [
        goMapping(base),
        goMapping({ ...base, tlsPort: 7443 }),
        goMapping({ ...base, sni: 'a.example.com' }),
        goMapping(base).replace(/}$/, ',"enable_backend_mtls":true}'),
      ];
      expect((await go('POST', '/routing/v1/tcp_routes/create', `[${variants.join(',')}]`)).status).to.equal(201);
      const listed = (await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body;
      expect(listed).to.have.length(4);
      expect(new Set(listed.map((m) => m.modification_tag.guid)).size).to.equal(4);
      // A delete names the record by the same key: only the TLS-port one goes.
      expect((await go('POST', '/routing/v1/tcp_routes/delete', `[${variants[1]}]`)).status).to.equal(204);
      const left = (await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body;
      expect(left.map((m) => m.backend_tls_port)).to.deep.equal([0, 0, 0]);
    });

    it('terminate_frontend_tls must agree across the backends of a port and SNI host name', async function () {
      const m = (backendPort: number, extra: Partial<Parameters<typeof goMapping>[0]> = {}) =>
        goMapping({ group: guid, port: 20040, ip: '10.0.4.1', backendPort, ...extra });
      await go('POST', '/routing/v1/tcp_routes/create', `[${m(7000, { terminateTls: true })}]`);
      const refused = await go<CfError>('POST', '/routing/v1/tcp_routes/create', `[${m(7001)}]`);
      expectCfError(refused, 400, 'ProcessRequestError');
      expect(refused.body.message).to.include('terminate_frontend_tls: false not allowed');
      // Another SNI host name on the same port is a separate set, as in CF's FindSimilarTcpRouteMappings.
      expect(
        (await go('POST', '/routing/v1/tcp_routes/create', `[${m(7001, { sni: 'b.example.com' })}]`)).status,
      ).to.equal(201);
      expect(
        (await go('POST', '/routing/v1/tcp_routes/create', `[${m(7002, { terminateTls: true })}]`)).status,
      ).to.equal(201);
      // An expired record no longer counts.
      h.advance(121_000);
      expect((await go('POST', '/routing/v1/tcp_routes/create', `[${m(7003)}]`)).status).to.equal(201);
      expect(await h.control.sweeper.sweep()).to.equal(3);
    });

    it('a re-registration bumps the index of the stored tag and refreshes the ttl', async function () {
      const body = `[${goMapping({ group: guid, port: 20003, ip: '10.0.0.3', backendPort: 7000, ttl: 60 })}]`;
      await go('POST', '/routing/v1/tcp_routes/create', body);
      const first = (await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body[0];
      h.advance(50_000);
      await go('POST', '/routing/v1/tcp_routes/create', body);
      const second = (await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body[0];
      expect(second.modification_tag).to.deep.equal({ guid: first.modification_tag.guid, index: 1 });
      h.advance(20_000);
      expect(await h.control.sweeper.sweep()).to.equal(0);
      expect((await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body).to.have.length(1);
    });

    it('ttl: absent means max_ttl (120 s); 0 and above the max are 400', async function () {
      const absent = goMapping({ group: guid, port: 20004, ip: '10.0.0.4', backendPort: 7000, ttl: null });
      expect((await go('POST', '/routing/v1/tcp_routes/create', `[${absent}]`)).status).to.equal(201);
      expect((await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body[0].ttl).to.equal(120);
      for (const ttl of [0, 121]) {
        const body = `[${goMapping({ group: guid, port: 20005, ip: '10.0.0.5', backendPort: 7000, ttl })}]`;
        expectCfError(await go('POST', '/routing/v1/tcp_routes/create', body), 400, 'ProcessRequestError');
      }
      const alpnsAlone = goMapping({ group: guid, port: 20006, ip: '10.0.0.6', backendPort: 7000, alpns: 'h2' });
      expectCfError(await go('POST', '/routing/v1/tcp_routes/create', `[${alpnsAlone}]`), 400, 'ProcessRequestError');
    });

    it('empty arrays: create answers 201, delete 204, list []', async function () {
      expect((await go('POST', '/routing/v1/tcp_routes/create', '[]')).status).to.equal(201);
      expect((await go('POST', '/routing/v1/tcp_routes/delete', '[]')).status).to.equal(204);
      expect((await go('GET', '/routing/v1/tcp_routes')).body).to.deep.equal([]);
    });

    it('FilteredTcpRouteMappings: ?isolation_segment= repeatable, empty for routes without one', async function () {
      const body = `[${['', 'is1', 'is2']
        .map((segment, i) => goMapping({ group: guid, port: 20010 + i, ip: '10.0.1.1', backendPort: 7000, segment }))
        .join(',')}]`;
      await go('POST', '/routing/v1/tcp_routes/create', body);
      const ports = async (q: string) =>
        (await go<CfMapping[]>('GET', `/routing/v1/tcp_routes?${q}`)).body.map((m) => m.port).sort();
      expect(await ports('isolation_segment=is1')).to.deep.equal([20011]);
      expect(await ports('isolation_segment=is1&isolation_segment=is2')).to.deep.equal([20011, 20012]);
      expect(await ports('isolation_segment=')).to.deep.equal([20010]);
      expect(await ports('isolation_segment=&isolation_segment=is2')).to.deep.equal([20010, 20012]);
    });

    it('DeleteTcpRouteMappings with ttl and an empty tag: 204; the Delete event carries the stored record', async function () {
      const mapping = goMapping({ group: guid, port: 20020, ip: '10.0.2.1', backendPort: 7000, instanceId: 'i-1' });
      await go('POST', '/routing/v1/tcp_routes/create', `[${mapping}]`);
      const stored = (await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body[0];
      const sub = await subscribe(`${h.control.url}/routing/v1/tcp_routes/events`, jwt);
      try {
        expect(sub.status).to.equal(200);
        await new Promise((r) => setTimeout(r, 200));
        expect((await go('POST', '/routing/v1/tcp_routes/delete', `[${mapping}]`)).status).to.equal(204);
        await waitFor(() => sub.events.some((e) => e.event === 'Delete'), 'the Delete event');
        const ev = sub.events.find((e) => e.event === 'Delete') as SseEvent;
        expect(ev.id).to.match(/^\d+$/);
        expect(JSON.parse(ev.data)).to.deep.include({
          port: 20020,
          backend_ip: '10.0.2.1',
          instance_id: 'i-1',
          modification_tag: stored.modification_tag,
        });
      } finally {
        sub.close();
      }
      // Deleting what is gone is still 204 (CF ignores KeyNotFound).
      expect((await go('POST', '/routing/v1/tcp_routes/delete', `[${mapping}]`)).status).to.equal(204);
    });
  });

  describe('a cf-tcp-router style consumer', function () {
    /** cf-tcp-router's routing table: port (and SNI hostname) -> backend -> its tag. */
    type Table = Map<string, Map<string, CfTag>>;
    const routeKey = (m: CfMapping) => `${m.port}|${m.backend_sni_hostname ?? ''}`;
    const backendKey = (m: CfMapping) => `${m.backend_ip}:${m.backend_port}|${m.backend_tls_port}|${m.instance_id}`;
    /** routing-api models.ModificationTag.SucceededBy. */
    const succeededBy = (cur: CfTag | undefined, next: CfTag) =>
      !cur || cur.guid === '' || next.guid === '' || cur.guid !== next.guid || cur.index < next.index;
    const apply = (table: Table, action: string, m: CfMapping) => {
      const entry = table.get(routeKey(m)) ?? new Map<string, CfTag>();
      const cur = entry.get(backendKey(m));
      if (action === 'Upsert' && succeededBy(cur, m.modification_tag)) entry.set(backendKey(m), m.modification_tag);
      const same = cur && cur.guid === m.modification_tag.guid && cur.index === m.modification_tag.index;
      if (action === 'Delete' && cur && (same || succeededBy(cur, m.modification_tag))) entry.delete(backendKey(m));
      if (entry.size > 0) table.set(routeKey(m), entry);
      else table.delete(routeKey(m));
    };

    it('converges by bulk sync then events on the table our routers read', async function () {
      const guid = (await go<CfRouterGroup[]>('GET', '/routing/v1/router_groups?name=cf-tcp')).body[0].guid;
      const reg = (port: number, backendPort: number, extra: Partial<Parameters<typeof goMapping>[0]> = {}) =>
        goMapping({ group: guid, port, ip: '10.9.0.1', backendPort, ...extra });
      const create = (...m: string[]) => go('POST', '/routing/v1/tcp_routes/create', `[${m.join(',')}]`);
      const remove = (...m: string[]) => go('POST', '/routing/v1/tcp_routes/delete', `[${m.join(',')}]`);
      await create(reg(20100, 7000), reg(20100, 7001), reg(20101, 7000, { ttl: 10 }));

      // Subscribe first and cache events while the bulk sync reads the list (updater.Sync).
      const sub = await subscribe(`${h.control.url}/routing/v1/tcp_routes/events`, jwt);
      try {
        await new Promise((r) => setTimeout(r, 200));
        const changes = (async () => {
          await create(reg(20102, 7000, { sni: 'a.example.com' }), reg(20100, 7001));
          await remove(reg(20100, 7000));
          await create(reg(20103, 7000), reg(20103, 7002, { tlsPort: 7443, instanceId: 'i-7' }));
          await create(reg(20100, 7001));
        })();
        const table: Table = new Map();
        for (const m of (await go<CfMapping[]>('GET', '/routing/v1/tcp_routes')).body) apply(table, 'Upsert', m);
        await changes;
        h.advance(11_000);
        expect(await h.control.sweeper.sweep()).to.equal(1); // 20101 expires: a Delete event
        await remove(reg(20103, 7000));
        await waitFor(() => sub.events.filter((e) => e.event === 'Delete').length >= 3, 'three Delete events');
        for (const e of sub.events) apply(table, e.event, JSON.parse(e.data) as CfMapping);

        const ours = (
          await go<{ routes: Array<{ port: number; backends: Array<{ host: string; port: number }> }> }>(
            'GET',
            `/routing/v1/router_groups/${guid}/table`,
          )
        ).body.routes;
        const theirs = new Map<number, string[]>();
        for (const [key, backends] of table) {
          const port = Number(key.split('|')[0]);
          theirs.set(port, [...(theirs.get(port) ?? []), ...[...backends.keys()].map((b) => b.split('|')[0])].sort());
        }
        const expected = new Map(ours.map((r) => [r.port, r.backends.map((b) => `${b.host}:${b.port}`).sort()]));
        expect([...theirs.entries()].sort()).to.deep.equal([...expected.entries()].sort());
        expect([...expected.keys()].sort()).to.deep.equal([20100, 20102, 20103]);
        // The re-registered backend carries a bumped tag in the consumer's table too.
        expect(table.get('20100|')?.get('10.9.0.1:7001|0|')?.index).to.equal(2);
      } finally {
        sub.close();
      }
    });
  });

  describe('sf token issue and --routing-compat cf', function () {
    it('mints a JWT control accepts, with the secret from a file', async function () {
      const { execFile } = await import('node:child_process');
      const sf = join(__dirname, '..', '..', 'cli', 'sf.js');
      const run = (args: string[], env: Record<string, string>) =>
        new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
          execFile(
            process.execPath,
            [sf, ...args],
            { env: { PATH: process.env.PATH ?? '', ...env } },
            (err, stdout, stderr) =>
              resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
          );
        });
      const env = { SF_JWT_SECRET_FILE: join(dir, 'secret'), SF_JWT_ISSUER: ISSUER };
      const ok = await run(['token', 'issue', '--scopes', 'routing.routes.read', '--ttl', '60'], env);
      expect(ok.code, ok.stderr).to.equal(0);
      const minted = ok.stdout.trim();
      expect((await go('GET', '/routing/v1/tcp_routes', undefined, minted)).status).to.equal(200);
      expectCfError(await go('POST', '/routing/v1/tcp_routes/create', '[]', minted), 401, 'UnauthorizedError');
      const bad = await run(['token', 'issue', '--scopes', 'routing.everything'], env);
      expect(bad.code).to.equal(2);
      expect(bad.stderr).to.include('unknown scope');
    });

    it('cf mode ignores unknown fields and deletes a group that has routes; strict refuses both', async function () {
      const body = (group: string) =>
        `[{"router_group_guid":"${group}","port":23000,"backend_ip":"10.0.0.1","backend_port":7000,"future_field":1}]`;
      const groupBody = '{"guid":"","name":"compat-mode","type":"tcp","reservable_ports":"23000-23009"}';
      const strictGroup = (await go<CfRouterGroup>('POST', '/routing/v1/router_groups', groupBody)).body.guid;
      expectCfError(await go('POST', '/routing/v1/tcp_routes/create', body(strictGroup)), 400, 'ProcessRequestError');
      await go('POST', '/routing/v1/tcp_routes/create', goMappingList(strictGroup));
      const refused = await go<CfError>('DELETE', `/routing/v1/router_groups/${strictGroup}`);
      expect(refused.status).to.equal(409);
      await go('POST', '/routing/v1/tcp_routes/delete', goMappingList(strictGroup));
      await go('DELETE', `/routing/v1/router_groups/${strictGroup}`);

      const cf = await startControlHarness(
        {
          jwt: { hs256SecretFile: join(dir, 'secret'), issuer: ISSUER },
          api: { routingCompat: 'cf' },
          keyPrefix: 'cfmode:',
        },
        h.redis,
      );
      try {
        const call = async (method: string, path: string, b?: string) =>
          (await fetch(`${cf.control.url}${path}`, { method, headers: { authorization: `bearer ${jwt}` }, body: b }))
            .status;
        const groupRes = await fetch(`${cf.control.url}/routing/v1/router_groups`, {
          method: 'POST',
          headers: { authorization: `bearer ${jwt}` },
          body: groupBody,
        });
        const guid = ((await groupRes.json()) as CfRouterGroup).guid;
        expect(await call('POST', '/routing/v1/tcp_routes/create', body(guid))).to.equal(201);
        expect(await call('DELETE', `/routing/v1/router_groups/${guid}`)).to.equal(204);
      } finally {
        await cf.stop();
      }
    });
  });

  describe('scopes', function () {
    const cases: Array<[string, string, string | undefined, string]> = [
      ['GET', '/routing/v1/router_groups', undefined, 'routing.router_groups.read'],
      [
        'POST',
        '/routing/v1/router_groups',
        '{"guid":"","name":"cf-tcp","type":"tcp","reservable_ports":"20000-20199"}',
        'routing.router_groups.write',
      ],
      ['GET', '/routing/v1/tcp_routes', undefined, 'routing.routes.read'],
      ['POST', '/routing/v1/tcp_routes/create', '[]', 'routing.routes.write'],
      ['POST', '/routing/v1/tcp_routes/delete', '[]', 'routing.routes.write'],
    ];

    it('a JWT works with exactly the scope CF asks for and gets 401 UnauthorizedError without it', async function () {
      for (const [method, path, body, needed] of cases) {
        const others = ALL_SCOPES.filter((s) => s !== needed);
        const ok = await go(method, path, body, await token([needed]));
        expect(ok.status, `${method} ${path} with ${needed}`).to.be.within(200, 299);
        const refused = await go(method, path, body, await token(others));
        expectCfError(refused, 401, 'UnauthorizedError');
        expect((refused.body as CfError).message).to.equal('You are not authorized to perform the requested action');
      }
      const events = await subscribe(
        `${h.control.url}/routing/v1/tcp_routes/events`,
        await token(['routing.router_groups.read']),
      );
      events.close();
      expect(events.status).to.equal(401);
    });

    it('refuses an expired JWT and one from another issuer with 401; opaque tokens still work', async function () {
      const key = new TextEncoder().encode(SECRET);
      const hourAgo = Math.floor(Date.now() / 1000) - 3600;
      const expired = await new SignJWT({ scope: ALL_SCOPES })
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuer(ISSUER)
        .setIssuedAt(hourAgo - 60)
        .setExpirationTime(hourAgo)
        .sign(key);
      expectCfError(await go('GET', '/routing/v1/tcp_routes', undefined, expired), 401, 'UnauthorizedError');
      const foreign = await issueDevJwt({
        secret: key,
        issuer: 'https://other.example',
        scopes: ALL_SCOPES,
        ttlSeconds: 60,
      });
      expectCfError(await go('GET', '/routing/v1/tcp_routes', undefined, foreign), 401, 'UnauthorizedError');
      expect((await h.api('GET', '/routing/v1/tcp_routes')).status).to.equal(200);
    });
  });
});
