import { expect } from 'chai';
import type { LookupAddress } from 'node:dns';
import { networkInterfaces } from 'node:os';
import { SELF_LOOP_ERROR_CODE, classifyHost, guardedLookup, loopsInto } from '../../../router/self-address';

function lookupWith(
  fn: ReturnType<typeof guardedLookup>,
  host: string,
  all: boolean,
): Promise<{ err: NodeJS.ErrnoException | null; result: string | LookupAddress[] }> {
  return new Promise((resolve) => fn(host, { all }, (err, result) => resolve({ err, result })));
}

describe('self-address', () => {
  describe('classifyHost', () => {
    it('treats IPv4-mapped, bracketed and trailing-dot forms like their plain address', () => {
      expect(classifyHost('::ffff:127.0.0.1')).to.include({ address: '127.0.0.1', defaultLoopback: true });
      expect(classifyHost('[::1]')).to.include({ defaultLoopback: true, loopback: true });
      expect(classifyHost('LOCALHOST.')).to.include({ defaultLoopback: true });
      expect(classifyHost('db.localhost')).to.include({ defaultLoopback: true });
      expect(classifyHost('0.0.0.0')).to.include({ unspecified: true });
      expect(classifyHost('::')).to.include({ unspecified: true });
      expect(classifyHost('db.example.com').address).to.equal(undefined);
    });
  });

  describe('loopsInto', () => {
    const loopbackForms = ['127.0.0.1', '0.0.0.0', 'localhost', '::1', '::', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1'];

    it('treats 127.0.0.1, 0.0.0.0, localhost and ::1 as one address on the same port', () => {
      for (const bind of ['127.0.0.1', '::1', 'localhost']) {
        for (const host of loopbackForms) {
          expect(loopsInto(host, 16000, { host: bind, port: 16000 }), `${host} -> ${bind}`).to.equal(true);
        }
      }
    });

    it('never matches another port', () => {
      for (const host of loopbackForms)
        expect(loopsInto(host, 16001, { host: '127.0.0.1', port: 16000 })).to.equal(false);
    });

    it('matches every loopback and local address when the router listens on a wildcard', () => {
      const local = Object.values(networkInterfaces())
        .flat()
        .map((i) => i?.address)
        .filter((a): a is string => a !== undefined);
      for (const bind of ['0.0.0.0', '::']) {
        for (const host of ['127.0.0.2', '127.9.9.9', ...loopbackForms, ...local]) {
          expect(loopsInto(host, 7601, { host: bind, port: 7601 }), `${host} -> ${bind}`).to.equal(true);
        }
        expect(loopsInto('192.0.2.10', 7601, { host: bind, port: 7601 })).to.equal(false);
      }
    });

    it('matches a specific address only by itself', () => {
      expect(loopsInto('127.0.0.2', 16000, { host: '127.0.0.1', port: 16000 })).to.equal(false);
      expect(loopsInto('127.0.0.2', 16000, { host: '127.0.0.2', port: 16000 })).to.equal(true);
      expect(loopsInto('192.0.2.10', 16000, { host: '192.0.2.10', port: 16000 })).to.equal(true);
      expect(loopsInto('127.0.0.1', 16000, { host: '192.0.2.10', port: 16000 })).to.equal(false);
    });

    it('leaves names other than localhost to the connect-time lookup', () => {
      expect(loopsInto('db.example.com', 16000, { host: '0.0.0.0', port: 16000 })).to.equal(false);
    });
  });

  describe('guardedLookup', () => {
    it('fails a name that resolves to the router own address, before any connection', async () => {
      const lookup = guardedLookup(16000, () => [{ host: '127.0.0.1', port: 16000 }]);
      for (const all of [false, true]) {
        const { err } = await lookupWith(lookup, 'localhost', all);
        expect(err?.code).to.equal(SELF_LOOP_ERROR_CODE);
        expect(err?.message).to.contain("router's own address 127.0.0.1:16000");
      }
    });

    it('resolves like Node when the name is not the router', async () => {
      const lookup = guardedLookup(16000, () => [{ host: '192.0.2.10', port: 16000 }]);
      const one = await lookupWith(lookup, 'localhost', false);
      expect(one.err).to.equal(null);
      expect(['127.0.0.1', '::1']).to.include(one.result);
      const all = await lookupWith(lookup, 'localhost', true);
      expect(all.err).to.equal(null);
      expect(all.result).to.be.an('array').with.length.greaterThan(0);
    });
  });
});
