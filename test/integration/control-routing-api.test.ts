import { expect } from 'chai';
import type { TcpRouteMapping } from '../../control/state/tcp-route-types';
import { startControlHarness, type ApiResponse, type ControlHarness } from '../helpers/control-harness';

type Mapping = TcpRouteMapping;
interface ErrorReply {
  error: { code: string; message: string; field?: string };
}

describe('control routing API', function () {
  let h: ControlHarness;
  const route = (port: number, backendPort = 6379, extra: Record<string, unknown> = {}) => ({
    router_group_guid: h.defaultGroup,
    port,
    backend_ip: '127.0.0.1',
    backend_port: backendPort,
    ...extra,
  });
  const list = async () => (await h.api<Mapping[]>('GET', '/routing/v1/tcp_routes')).body;
  const expectError = (res: ApiResponse<unknown>, status: number, code: string, field?: string) => {
    expect(res.status, JSON.stringify(res.body)).to.equal(status);
    const err = (res.body as ErrorReply).error;
    expect(err.code).to.equal(code);
    if (field !== undefined) expect(err.field).to.equal(field);
  };

  before(async () => {
    h = await startControlHarness();
  });
  after(async () => {
    await h.stop();
  });
  beforeEach(async () => {
    const all = await list();
    const keys = all.map(({ router_group_guid, port, backend_ip, backend_port, backend_id }) => ({
      router_group_guid,
      port,
      backend_ip,
      backend_port,
      backend_id,
    }));
    if (keys.length) await h.api('POST', '/routing/v1/tcp_routes/delete', keys);
  });

  describe('router_groups', function () {
    it('lists the default group with ports 16000-16999', async function () {
      const res = await h.api<Array<{ name: string; type: string; reservable_ports: string }>>(
        'GET',
        '/routing/v1/router_groups',
      );
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.include.members([
        { guid: h.defaultGroup, name: 'default', type: 'tcp', reservable_ports: '16000-16999' },
      ]);
    });

    it('refuses a group whose ports overlap another group', async function () {
      const res = await h.api('POST', '/routing/v1/router_groups', {
        name: 'overlap',
        type: 'tcp',
        reservable_ports: '15000-16000',
      });
      expectError(res, 409, 'SF_ERR_PORT_CONFLICT', 'reservable_ports');
    });

    it('creates, updates and deletes a group', async function () {
      const created = await h.api<{ guid: string }>('POST', '/routing/v1/router_groups', {
        name: 'edge',
        type: 'tcp',
        reservable_ports: '20000-20099',
      });
      expect(created.status).to.equal(201);
      const guid = created.body.guid;
      const updated = await h.api<{ reservable_ports: string }>('PUT', `/routing/v1/router_groups/${guid}`, {
        reservable_ports: '20000-20199',
      });
      expect(updated.body.reservable_ports).to.equal('20000-20199');
      expect((await h.api('DELETE', `/routing/v1/router_groups/${guid}`)).status).to.equal(204);
      expectError(await h.api('GET', `/routing/v1/router_groups/${guid}`), 404, 'SF_ERR_NOT_FOUND');
    });

    it('refuses to delete a group that still has routes', async function () {
      await h.api('POST', '/routing/v1/tcp_routes/create', [route(16100)]);
      expectError(
        await h.api('DELETE', `/routing/v1/router_groups/${h.defaultGroup}`),
        409,
        'SF_ERR_ROUTER_GROUP_IN_USE',
      );
    });
  });

  describe('tcp_routes create/delete', function () {
    it('creates a route, bumps the table version and deletes it', async function () {
      const before = (await h.api<{ version: number }>('GET', `/routing/v1/router_groups/${h.defaultGroup}/table`)).body
        .version;
      const res = await h.api<Mapping[]>('POST', '/routing/v1/tcp_routes/create', [
        route(16001, 6379, { weight: 3, mode: 'round-robin' }),
      ]);
      expect(res.status).to.equal(201);
      expect(res.body[0]).to.include({
        port: 16001,
        backend_id: '127.0.0.1:6379',
        weight: 3,
        mode: 'round-robin',
        ttl: 120,
      });
      const table = (
        await h.api<{ version: number; routes: Array<{ port: number }> }>(
          'GET',
          `/routing/v1/router_groups/${h.defaultGroup}/table`,
        )
      ).body;
      expect(table.version).to.equal(before + 1);
      expect(table.routes.map((r) => r.port)).to.deep.equal([16001]);
      expect((await h.api('POST', '/routing/v1/tcp_routes/delete', [route(16001)])).status).to.equal(204);
      expect(await list()).to.deep.equal([]);
    });

    it('groups several backends on one port into one route', async function () {
      await h.api('POST', '/routing/v1/tcp_routes/create', [
        route(16002, 7001),
        route(16002, 7002, { role: 'replica' }),
      ]);
      const table = (
        await h.api<{ routes: Array<{ backends: unknown[] }> }>(
          'GET',
          `/routing/v1/router_groups/${h.defaultGroup}/table`,
        )
      ).body;
      expect(table.routes).to.have.length(1);
      expect(table.routes[0].backends).to.have.length(2);
      await h.api('POST', '/routing/v1/tcp_routes/delete', [route(16002, 7001)]);
      const after = (
        await h.api<{ routes: Array<{ backends: Array<{ port: number }> }> }>(
          'GET',
          `/routing/v1/router_groups/${h.defaultGroup}/table`,
        )
      ).body;
      expect(after.routes[0].backends.map((b) => b.port)).to.deep.equal([7002]);
    });

    it('expires a route whose TTL ran out and keeps a re-registered one', async function () {
      await h.api('POST', '/routing/v1/tcp_routes/create', [
        route(16003, 6379, { ttl: 5 }),
        route(16004, 6379, { ttl: 5 }),
      ]);
      h.advance(4_000);
      await h.api('POST', '/routing/v1/tcp_routes/create', [route(16004, 6379, { ttl: 5 })]);
      h.advance(2_000);
      expect(await h.control.sweeper.sweep()).to.equal(1);
      expect((await list()).map((m) => m.port)).to.deep.equal([16004]);
    });

    it('sweeps safely from two controls at once', async function () {
      const other = await startControlHarness({}, h.redis);
      try {
        await h.api('POST', '/routing/v1/tcp_routes/create', [
          route(16005, 6379, { ttl: 1 }),
          route(16006, 6379, { ttl: 1 }),
        ]);
        h.advance(2_000);
        other.advance(2_000);
        const [a, b] = await Promise.all([h.control.sweeper.sweep(), other.control.sweeper.sweep()]);
        expect(a + b).to.equal(2);
        expect(await list()).to.deep.equal([]);
      } finally {
        await other.stop();
      }
    });

    it('owns the modification_tag: a client tag is ignored, as in CF', async function () {
      const tag = (index: number) => ({ modification_tag: { guid: 'writer-a', index } });
      const first = await h.api<Mapping[]>('POST', '/routing/v1/tcp_routes/create', [route(16010, 6379, tag(5))]);
      expect(first.status).to.equal(201);
      expect(first.body[0].modification_tag.guid).to.not.equal('writer-a');
      expect(first.body[0].modification_tag.index).to.equal(0);
      const second = await h.api<Mapping[]>('POST', '/routing/v1/tcp_routes/create', [
        route(16010, 6379, { ...tag(3), weight: 9 }),
      ]);
      expect(second.body[0].modification_tag).to.deep.equal({ guid: first.body[0].modification_tag.guid, index: 1 });
      expect((await h.api('POST', '/routing/v1/tcp_routes/delete', [route(16010, 6379, tag(0))])).status).to.equal(204);
      expect(await list()).to.deep.equal([]);
    });

    it('refuses a stale modification_tag from an internal writer (the route emitter guards with it)', async function () {
      const tag = (index: number) => ({ guid: 'service:x', index });
      const base = { router_group_guid: h.defaultGroup, port: 16012, backend_ip: '127.0.0.1', backend_port: 6379 };
      await h.control.routes.upsert([{ ...base, modification_tag: tag(5) }]);
      let err: unknown;
      await h.control.routes
        .upsert([{ ...base, modification_tag: tag(3), weight: 9 }])
        .catch((e: unknown) => (err = e));
      expect((err as { code?: string }).code).to.equal('SF_ERR_STALE_MODIFICATION_TAG');
      await h.control.routes.delete([base]);
    });

    it('increments the stored tag when a writer sends none', async function () {
      const first = (await h.api<Mapping[]>('POST', '/routing/v1/tcp_routes/create', [route(16011)])).body[0];
      const second = (await h.api<Mapping[]>('POST', '/routing/v1/tcp_routes/create', [route(16011)])).body[0];
      expect(second.modification_tag).to.deep.equal({
        guid: first.modification_tag.guid,
        index: first.modification_tag.index + 1,
      });
    });
  });

  describe('validation', function () {
    it('answers malformed JSON with 400 naming the body', async function () {
      expectError(
        await h.api('POST', '/routing/v1/tcp_routes/create', '[{"port": '),
        400,
        'SF_ERR_INVALID_JSON',
        'body',
      );
    });

    it('names the bad field and writes nothing of the request', async function () {
      const res = await h.api('POST', '/routing/v1/tcp_routes/create', [route(16020), route(16021, 70000)]);
      expectError(res, 400, 'SF_ERR_INVALID_REQUEST', 'tcp_routes[1].backend_port');
      expect(await list()).to.deep.equal([]);
    });

    it('refuses unknown fields and bad enum values', async function () {
      expectError(
        await h.api('POST', '/routing/v1/tcp_routes/create', [route(16022, 6379, { colour: 'red' })]),
        400,
        'SF_ERR_INVALID_REQUEST',
        'tcp_routes[0]',
      );
      expectError(
        await h.api('POST', '/routing/v1/tcp_routes/create', [route(16022, 6379, { mode: 'random' })]),
        400,
        'SF_ERR_INVALID_REQUEST',
        'tcp_routes[0].mode',
      );
      expectError(
        await h.api('POST', '/routing/v1/tcp_routes/create', { port: 1 }),
        400,
        'SF_ERR_INVALID_REQUEST',
        'tcp_routes',
      );
    });

    it('refuses a port outside the group reservable_ports, and an unknown group', async function () {
      expectError(
        await h.api('POST', '/routing/v1/tcp_routes/create', [route(15999)]),
        422,
        'SF_ERR_PORT_NOT_RESERVABLE',
        'tcp_routes[0].port',
      );
      expectError(
        await h.api('POST', '/routing/v1/tcp_routes/create', [{ ...route(16023), router_group_guid: 'nope' }]),
        400,
        'SF_ERR_INVALID_REQUEST',
        'tcp_routes[0].router_group_guid',
      );
      expect(await list()).to.deep.equal([]);
    });

    it('refuses an oversized body with 413', async function () {
      const small = await startControlHarness({ bodyLimitBytes: 1024 }, h.redis);
      try {
        const many = Array.from({ length: 100 }, (_, i) => route(16100 + i));
        expectError(
          await small.api('POST', '/routing/v1/tcp_routes/create', many),
          413,
          'SF_ERR_BODY_TOO_LARGE',
          'body',
        );
      } finally {
        await small.stop();
      }
    });
  });

  describe('auth', function () {
    it('answers a missing or unknown token with 401', async function () {
      expectError(
        await h.api('GET', '/routing/v1/tcp_routes', undefined, null),
        401,
        'SF_ERR_UNAUTHORIZED',
        'authorization',
      );
      expectError(await h.api('GET', '/routing/v1/tcp_routes', undefined, 'wrong-token'), 401, 'SF_ERR_UNAUTHORIZED');
    });

    it('lets a read token read but answers its writes with 401, as CF does for a missing scope', async function () {
      const created = await h.api<{ token: string }>('POST', '/v3/tokens', { name: 'reader', scopes: ['read'] });
      expect(created.status).to.equal(201);
      const token = created.body.token;
      expect((await h.api('GET', '/routing/v1/tcp_routes', undefined, token)).status).to.equal(200);
      expectError(await h.api('POST', '/routing/v1/tcp_routes/create', [route(16030)], token), 401, 'SF_ERR_FORBIDDEN');
      expectError(await h.api('POST', '/v3/tokens', { name: 'x', scopes: ['read'] }, token), 403, 'SF_ERR_FORBIDDEN');
      expect((await h.api('DELETE', '/v3/tokens/reader')).status).to.equal(204);
      expectError(await h.api('GET', '/routing/v1/tcp_routes', undefined, token), 401, 'SF_ERR_UNAUTHORIZED');
    });

    it('serves /health without a token', async function () {
      const res = await h.api<{ ok: boolean }>('GET', '/health', undefined, null);
      expect(res.body.ok).to.equal(true);
    });
  });
});
