import { expect } from 'chai';
import { runFaultSchedule, type CheckerResult } from '../../bench/lib/fault-checker';
import { FAULT_KINDS, runsOn, type FaultKind } from '../../bench/lib/fault-kinds';
import { netnsSupported } from '../helpers/netns';

/**
 * A fixed-seed run of the fault-schedule checker (bench/fault-schedule.ts) that applies
 * every fault kind once, in a seeded order: the cell partition too when this host can make
 * network namespaces. Recovery time is measured and printed, not bounded (no timing asserts: on a
 * shared machine PostgreSQL's rewind and standby start take from 3 s to over 20 s); every other
 * invariant must hold, and writes must come back before the settle timeout.
 */
const SEED = 20_251;

describe('fault schedule: a fixed-seed run of every fault kind', function () {
  this.timeout(40 * 60_000);
  let result: CheckerResult | undefined;
  let kinds: FaultKind[] = [];

  before(async () => {
    const partition = await netnsSupported();
    if (!partition) console.log('      cell-partition left out: network namespaces need root with CAP_NET_ADMIN');
    // The kinds of the default platform (processes): restarting a real sf up has a bench run of its own.
    kinds = FAULT_KINDS.filter((k) => runsOn(k, 'processes') && (k.name !== 'cell-partition' || partition));
    result = await runFaultSchedule({
      seed: SEED,
      faults: kinds.length,
      eachKindFirst: true,
      engines: ['redis', 'postgres'],
      kinds,
      recoveryBoundMs: null,
      gapMs: [500, 1_500],
      // SF_FAULT_LOG_DIR=dir keeps every platform process's log for a failing run.
      platform: { logDir: process.env.SF_FAULT_LOG_DIR ?? '' },
      log: (line) => console.log(`      ${line}`),
    });
    for (const s of result.steps)
      console.log(
        `      step ${s.step} ${s.kind}${s.service ? ` ${s.service}` : ''}: recovery ${Object.entries(s.recoveryMs)
          .map(([n, ms]) => `${n} ${ms ?? '-'} ms`)
          .join(', ')}; failed writes ${Object.entries(s.failedWrites)
          .map(([n, f]) => `${n} ${f}`)
          .join(', ')}`,
      );
  });

  it('applies every fault kind once with no invariant violated', () => {
    expect(result?.aborted, result?.aborted?.error).to.equal(undefined);
    expect(result!.steps.map((s) => s.kind).sort()).to.deep.equal(kinds.map((k) => k.name).sort());
    const lines = result!.violations.map((v) => `step ${v.step} ${v.fault} ${v.invariant} ${v.service}: ${v.details}`);
    expect(lines, lines.join('\n')).to.deep.equal([]);
  });

  it('acknowledged writes on both services', () => {
    expect(result!.acknowledged['fault-redis']).to.be.greaterThan(50);
    expect(result!.acknowledged['fault-pg']).to.be.greaterThan(50);
  });
});
