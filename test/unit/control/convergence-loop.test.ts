import { expect } from 'chai';
import pino from 'pino';
import { ConvergenceLoop } from '../../../control/convergence/convergence-loop';
import type { LeaderElector } from '../../../control/leader/leader-elector';
import type { LeaderFence } from '../../../control/leader/fenced-commit';
import type { CellDirectory, CellSnapshot } from '../../../control/services/cell-directory';
import type { ServiceStore } from '../../../control/services/service-store';
import type { ServiceRecord } from '../../../control/services/service-types';
import type { ServiceReconciler } from '../../../control/convergence/service-reconciler';
import { keyLayout } from '../../../protocol';

const FENCE: LeaderFence = { lockKey: 'l', tokenKey: 't', holder: 'me|1', token: 1 };

/** A loop over fakes: `reconciled` lists every reconcile in order; each takes `reconcileMs`. */
function fixture(names: string[], options: { reconcileMs?: number; passBudgetMs?: number } = {}) {
  const services = new Map<string, ServiceRecord>();
  // Records with no instances are never "settled", so every pass has work for each of them.
  for (const name of names) services.set(name, { name, status: 'creating', instances: [] } as unknown as ServiceRecord);
  const reconciled: string[] = [];
  const elector = { current: () => FENCE, tick: async () => undefined, resign: async () => undefined };
  const store = {
    keys: keyLayout(),
    noteChanged: () => undefined,
    snapshot: async () => ({ version: 1, services }),
  };
  const cells = new Map<string, CellSnapshot>();
  const directory = { snapshot: async () => cells, view: async () => cells, markDirty: () => undefined };
  const reconciler = {
    reconcile: async (name: string) => {
      reconciled.push(name);
      await new Promise((r) => setTimeout(r, options.reconcileMs ?? 0));
    },
  };
  const loop = new ConvergenceLoop(
    elector as unknown as LeaderElector,
    store as unknown as ServiceStore,
    directory as unknown as CellDirectory,
    reconciler as unknown as ServiceReconciler,
    { redisUrl: 'redis://unused', logger: pino({ level: 'silent' }), passBudgetMs: options.passBudgetMs },
  );
  return { loop, reconciled, services };
}

describe('ConvergenceLoop', () => {
  describe('pass', () => {
    it('reconciles a service named by a change message before every other', async () => {
      const { loop, reconciled, services } = fixture(['a', 'b', 'c', 'd']);
      await loop.pass();
      reconciled.length = 0;
      services.set('new', { name: 'new', status: 'creating', instances: [] } as unknown as ServiceRecord);
      loop.serviceChanged('2 new');
      await loop.pass();
      expect(reconciled[0]).to.equal('new');
      expect(reconciled).to.have.members(['new', 'a', 'b', 'c', 'd']);
    });

    it('starts no reconcile past its budget, and the next passes finish the work', async () => {
      const names = Array.from({ length: 8 }, (_, i) => `s${i}`);
      const { loop, reconciled } = fixture(names, { reconcileMs: 20, passBudgetMs: 30 });
      await loop.pass();
      // Each reconcile takes at least 20 ms, so the budget stops the pass after the second.
      expect(reconciled.length).to.be.within(1, 2);
      for (let i = 0; i < 8 && reconciled.length < names.length; i++) await loop.pass();
      expect(new Set(reconciled)).to.deep.equal(new Set(names));
    });

    it('reaches every service while bursts of new ones, named by messages, take whole passes', async () => {
      const names = Array.from({ length: 6 }, (_, i) => `s${i}`);
      const { loop, reconciled, services } = fixture(names, { reconcileMs: 20, passBudgetMs: 30 });
      let version = 2;
      for (let i = 0; i < 20 && !names.every((n) => reconciled.includes(n)); i++) {
        // Every other pass three creates land first: more than its budget, so it is cut among them.
        if (i % 2 === 0)
          for (let k = 0; k < 3; k++) {
            const name = `new${i}-${k}`;
            services.set(name, { name, status: 'creating', instances: [] } as unknown as ServiceRecord);
            loop.serviceChanged(`${version++} ${name}`);
          }
        await loop.pass();
      }
      expect(names.filter((n) => !reconciled.includes(n))).to.deep.equal([]);
    });

    it('still reconciles one service in a pass whose reads alone spent the budget', async () => {
      const { loop, reconciled } = fixture(['only'], { passBudgetMs: 0 });
      await loop.pass();
      expect(reconciled).to.deep.equal(['only']);
    });
  });
});
