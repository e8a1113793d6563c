import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import {
  FDS_PER_CONNECTION,
  MAX_ROUTE_RESERVE,
  globalConnectionLimit,
  readFdLimit,
  reservedFds,
  routeReserve,
} from '../../../router/connection-budget';
import { RateLimitedLog } from '../../../router/rate-limited-log';

describe('connection-budget', () => {
  describe('readFdLimit', () => {
    let dir: string;
    before(() => (dir = mkdtempSync(join(tmpdir(), 'sf-limits-'))));
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('reads the soft RLIMIT_NOFILE of this process', () => {
      const limit = readFdLimit();
      if (process.platform === 'linux') expect(limit).to.be.a('number').greaterThan(0);
    });

    it('reads the soft column, and nothing from unlimited or a missing file', () => {
      const file = join(dir, 'limits');
      writeFileSync(
        file,
        'Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n',
      );
      expect(readFdLimit(file)).to.equal(1024);
      writeFileSync(file, 'Max open files            unlimited            unlimited            files\n');
      expect(readFdLimit(file)).to.equal(undefined);
      expect(readFdLimit(join(dir, 'missing'))).to.equal(undefined);
    });
  });

  describe('globalConnectionLimit', () => {
    it('leaves the reserve aside and counts two descriptors per connection', () => {
      expect(FDS_PER_CONNECTION).to.equal(2);
      // The machine: 20000 descriptors no longer fit 10000 connections.
      const limit = globalConnectionLimit(100_000, 20_000, 3);
      expect(limit).to.equal(Math.floor((20_000 - reservedFds(3)) / 2));
      expect(limit * 2 + reservedFds(3)).to.be.at.most(20_000);
      expect(limit).to.be.lessThan(10_000);
    });

    it('reserves a descriptor per route port', () => {
      expect(reservedFds(10) - reservedFds(0)).to.equal(10);
    });

    it('keeps the configured maximum when it is lower, and never goes negative', () => {
      expect(globalConnectionLimit(50, 20_000, 1)).to.equal(50);
      expect(globalConnectionLimit(50, undefined, 1)).to.equal(50);
      expect(globalConnectionLimit(50, 10, 1)).to.equal(0);
    });
  });

  describe('routeReserve', () => {
    it('reserves nothing for a single route and at most half the limit in all', () => {
      expect(routeReserve(1000, 1)).to.equal(0);
      expect(routeReserve(20, 2)).to.equal(5);
      expect(routeReserve(1_000_000, 2)).to.equal(MAX_ROUTE_RESERVE);
      for (const routes of [2, 3, 7, 100, 10_000]) {
        expect(routeReserve(9_000, routes) * routes).to.be.at.most(4_500);
      }
    });
  });

  describe('RateLimitedLog', () => {
    it('logs once per interval and key, and counts what it left out', () => {
      const lines: Array<Record<string, unknown>> = [];
      const logger = pino(
        { level: 'info' },
        { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) },
      );
      let now = 0;
      const log = new RateLimitedLog(logger, 1000, () => now);
      for (let i = 0; i < 50; i++) log.warn('global', { i }, 'limit reached');
      log.warn('route:1', {}, 'route limit reached');
      now = 1500;
      log.warn('global', {}, 'limit reached');
      expect(lines.map((l) => l.msg)).to.deep.equal(['limit reached', 'route limit reached', 'limit reached']);
      expect(lines[2]!.suppressedSinceLast).to.equal(49);
    });
  });
});
