import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Route, RouteTls } from '../../../protocol';
import { ServiceCertificates } from '../../../control/services/service-certificates';
import type { TcpRouteInput } from '../../../control/state/tcp-route-types';
import type { CellSnapshot } from '../../../control/services/cell-directory';
import { RouteEmitter } from '../../../control/services/route-emitter';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { RouterGroupStore } from '../../../control/state/router-group-store';
import type { TcpRouteStore } from '../../../control/state/tcp-route-store';

describe('RouteEmitter', function () {
  describe('sync', function () {
    const route: Route = {
      port: 16000,
      mode: 'primary',
      backends: [
        { id: 'cache-0', host: '127.0.0.1', port: 20001, role: 'primary', weight: 1, epoch: 3, state: 'active' },
      ],
    } as Route;
    const service = {
      name: 'cache',
      port: 16000,
      routerGroupGuid: 'g1',
      instances: [{ id: 'cache-0', cell: 'cell-1', role: 'primary', epoch: 3, specWritten: true }],
    } as unknown as ServiceRecord;
    // The cell is registered again but has not re-sent its reports (a wiped store, a restart).
    const cells = new Map([['cell-1', { name: 'cell-1', alive: true, actual: new Map() } as unknown as CellSnapshot]]);

    function emitter(deleted: unknown[]): RouteEmitter {
      const groups = { get: async () => ({ guid: 'g1' }) } as unknown as RouterGroupStore;
      const routes = {
        route: async (_group: unknown, port: number) => (port === route.port ? route : null),
        upsert: async () => undefined,
        delete: async (keys: unknown[]) => void deleted.push(...keys),
      } as unknown as TcpRouteStore;
      return new RouteEmitter(groups, routes);
    }

    it('removes a backend whose instance no cell reports', async function () {
      const deleted: unknown[] = [];
      expect(await emitter(deleted).sync(service, cells, 1)).to.equal(true);
      expect(deleted).to.have.length(1);
    });

    it('keeps it during a cell grace, so the route does not close before the reports are back', async function () {
      const deleted: unknown[] = [];
      expect(await emitter(deleted).sync(service, cells, 1, { keepUnreported: true })).to.equal(false);
      expect(deleted).to.deep.equal([]);
    });
  });

  describe('sync with TLS', function () {
    this.timeout(30_000);
    let dir: string;
    let certificates: ServiceCertificates;
    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'sf-emitter-tls-'));
      certificates = await ServiceCertificates.open(join(dir, 'ca'), '127.0.0.1');
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    const backend = {
      id: 'db-0',
      host: '127.0.0.1',
      port: 20001,
      role: 'primary',
      weight: 1,
      epoch: 1,
      state: 'active',
    };
    const service = {
      name: 'db',
      engine: 'postgres',
      tls: 'required',
      port: 16001,
      routerGroupGuid: 'g1',
      instances: [{ id: 'db-0', cell: 'cell-1', role: 'primary', epoch: 1, specWritten: true }],
    } as unknown as ServiceRecord;
    const cells = new Map([
      [
        'cell-1',
        {
          name: 'cell-1',
          alive: true,
          actual: new Map([['db-0', { state: 'running', host: '127.0.0.1', port: 20001 }]]),
        } as unknown as CellSnapshot,
      ],
    ]);

    function emitter(current: Route, upserts: TcpRouteInput[]): RouteEmitter {
      const groups = { get: async () => ({ guid: 'g1' }) } as unknown as RouterGroupStore;
      const routes = {
        route: async () => current,
        upsert: async (items: TcpRouteInput[]) => void upserts.push(...items),
        delete: async () => undefined,
      } as unknown as TcpRouteStore;
      return new RouteEmitter(groups, routes, certificates);
    }

    it('rewrites a plain route of a TLS service with a terminating section and an issued certificate', async function () {
      const upserts: TcpRouteInput[] = [];
      const plain = { port: 16001, mode: 'primary', backends: [backend] } as Route;
      expect(await emitter(plain, upserts).sync(service, cells, 1)).to.equal(true);
      expect(upserts).to.have.length(1);
      const tls = upserts[0].tls as RouteTls;
      expect(tls).to.include({ mode: 'terminate', startup: 'postgres', policy: 'required' });
      expect(tls.certFile).to.equal(join(dir, 'ca', 'issued', 'service-db.crt'));
      expect(new X509Certificate(readFileSync(tls.certFile as string)).subjectAltName).to.include('DNS:db');
      // Engines require a client certificate from the platform CA: the route names the routers' own.
      expect(tls.backendCertFile).to.equal(join(dir, 'ca', 'issued', 'router-client.crt'));
      expect(tls.backendKeyFile).to.equal(join(dir, 'ca', 'issued', 'router-client.key'));
      const client = new X509Certificate(readFileSync(tls.backendCertFile as string));
      expect(client.checkIssued(new X509Certificate(readFileSync(join(dir, 'ca', 'ca.crt'))))).to.equal(true);
      expect(client.subjectAltName).to.equal('DNS:sf-router');
    });

    it('writes nothing when the route already has the same TLS section', async function () {
      const first: TcpRouteInput[] = [];
      const plain = { port: 16001, mode: 'primary', backends: [backend] } as Route;
      await emitter(plain, first).sync(service, cells, 1);
      const current = { ...plain, tls: first[0].tls } as Route;
      const upserts: TcpRouteInput[] = [];
      expect(await emitter(current, upserts).sync(service, cells, 1)).to.equal(false);
      expect(upserts).to.deep.equal([]);
    });

    it('reaches an engine that reports TLS over TLS, verified against the platform CA', async function () {
      const tlsCells = new Map([
        [
          'cell-1',
          {
            name: 'cell-1',
            alive: true,
            actual: new Map([['db-0', { state: 'running', host: '127.0.0.1', port: 20001, tls: true }]]),
          } as unknown as CellSnapshot,
        ],
      ]);
      const redis = { ...service, engine: 'redis' } as unknown as ServiceRecord;
      const first: TcpRouteInput[] = [];
      const plain = { port: 16001, mode: 'primary', backends: [backend] } as Route;
      await emitter(plain, first).sync(redis, tlsCells, 1);
      expect(first[0]!.backend_tls).to.equal(true);
      expect((first[0]!.tls as RouteTls).backendCaFile).to.equal(certificates.caFile);
      // The same route with the backend's TLS is current; the plain engine's report changes it back.
      const current = { ...plain, tls: first[0]!.tls, backends: [{ ...backend, tls: true }] } as Route;
      const none: TcpRouteInput[] = [];
      expect(await emitter(current, none).sync(redis, tlsCells, 1)).to.equal(false);
      const back: TcpRouteInput[] = [];
      expect(await emitter(current, back).sync(redis, cells, 1)).to.equal(true);
      expect(back[0]!.backend_tls).to.equal(false);
    });

    it('keeps services without TLS in plaintext from the router, whatever their engines report', function () {
      const off = { ...service, engine: 'redis', tls: 'off' } as unknown as ServiceRecord;
      const tlsCells = new Map([
        [
          'cell-1',
          {
            name: 'cell-1',
            alive: true,
            actual: new Map([['db-0', { state: 'running', host: '127.0.0.1', port: 20001, tls: true }]]),
          } as unknown as CellSnapshot,
        ],
      ]);
      const e = emitter({ port: 16001, mode: 'primary', backends: [] } as unknown as Route, []);
      expect(e.desiredBackends(off, tlsCells)[0]!.tls).to.equal(undefined);
    });

    it('re-encrypts to PostgreSQL engines that report TLS, verifying them by the service name', async function () {
      const tlsCells = new Map([
        [
          'cell-1',
          {
            name: 'cell-1',
            alive: true,
            actual: new Map([['db-0', { state: 'running', host: '127.0.0.1', port: 20001, tls: true }]]),
          } as unknown as CellSnapshot,
        ],
      ]);
      const upserts: TcpRouteInput[] = [];
      await emitter({ port: 16001, mode: 'primary', backends: [backend] } as Route, upserts).sync(service, tlsCells, 1);
      expect(upserts[0]!.backend_tls).to.equal(true);
      // The engines present the service's certificate (SCRAM channel binding), which names the service.
      expect((upserts[0]!.tls as RouteTls).backendServerName).to.equal('db');
      // An engine on a cell that does not report TLS (no certificate) stays plaintext.
      const e = emitter({ port: 16001, mode: 'primary', backends: [] } as unknown as Route, []);
      expect(e.desiredBackends(service, cells)[0]!.tls).to.equal(undefined);
    });

    it('verifies Redis engines by the service name when they present the service certificate, else by address', async function () {
      const tlsCells = new Map([
        [
          'cell-1',
          {
            name: 'cell-1',
            alive: true,
            actual: new Map([['db-0', { state: 'running', host: '127.0.0.1', port: 20001, tls: true }]]),
          } as unknown as CellSnapshot,
        ],
      ]);
      const withCert = {
        ...service,
        engine: 'redis',
        tlsCertificate: { certFile: '/x/service-db.crt', keyFile: '/x/service-db.key' },
      } as unknown as ServiceRecord;
      const upserts: TcpRouteInput[] = [];
      await emitter({ port: 16001, mode: 'primary', backends: [backend] } as Route, upserts).sync(
        withCert,
        tlsCells,
        1,
      );
      expect((upserts[0]!.tls as RouteTls).backendServerName).to.equal('db');
      // A Redis service admitted before its engines had the service's certificate: their cell's.
      const older = { ...service, engine: 'redis', tlsCertificate: undefined } as unknown as ServiceRecord;
      const plain: TcpRouteInput[] = [];
      await emitter({ port: 16001, mode: 'primary', backends: [backend] } as Route, plain).sync(older, tlsCells, 1);
      expect((plain[0]!.tls as RouteTls).backendServerName).to.equal(undefined);
    });
  });
});
