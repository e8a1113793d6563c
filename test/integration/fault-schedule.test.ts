import { expect } from 'chai';
import { runFaultSchedule, type CheckerResult } from '../../bench/lib/fault-checker';
import { faultKindsByName } from '../../bench/lib/fault-kinds';

/**
 * A short fixed-seed run of the fault-schedule checker (bench/fault-schedule.ts, issue 10) with
 * the fault kinds that pass today. Kinds that break an invariant today are listed in
 * KNOWN_FAILING with the violation they cause; move a kind up once its fix lands.
 */
const PASSING_KINDS = [
  'control-restart',
  'router-restart',
  'failover-bad-target',
  'state-redis-restart',
  'state-redis-wipe',
  'platform-restart',
];
const SEED = 20_251;
const FAULTS = 4;

const KNOWN_FAILING: Array<{ kind: string; reason: string }> = [
  {
    kind: 'engine-kill',
    reason:
      'postgres recovery was 10.4-11.0 s (seed 3 steps 1-2); 3.3 s in three kills since the WAL fix (docs/fencing.md), too few checker runs yet to hold it to the 10 s bound here',
  },
  {
    kind: 'cell-kill',
    reason:
      'one-primary and router-points-at-primary: the old primary outlives its SIGKILLed cell agent as a master for seconds after the cell is back (seed 11 step 5)',
  },
  {
    kind: 'failover-planned',
    reason:
      'passed in the runs since the switchover fixes (postgres recovery 3.3-7.3 s), but a postgres switchover waits for its rejoin under load: too few runs yet',
  },
  { kind: 'failover-to', reason: 'the postgres switchover path of failover-planned (seed 101 step 3: 7.3 s)' },
  {
    kind: 'fence-unfence',
    reason:
      'sf fence on postgres recovered in 5.5-8.1 s since the WAL fix (was 16-47 s), close to the 10 s bound on a loaded machine',
  },
];

describe('fault schedule: a fixed-seed run of passing fault kinds', function () {
  this.timeout(240_000);
  let result: CheckerResult | undefined;

  before(async () => {
    result = await runFaultSchedule({
      seed: SEED,
      faults: FAULTS,
      engines: ['redis', 'postgres'],
      kinds: faultKindsByName(PASSING_KINDS),
      gapMs: [500, 1_500],
      log: (line) => console.log(`      ${line}`),
    });
  });

  it(`runs ${FAULTS} faults of seed ${SEED} with no invariant violated`, () => {
    expect(result?.aborted, result?.aborted?.error).to.equal(undefined);
    expect(result!.steps).to.have.length(FAULTS);
    const lines = result!.violations.map((v) => `step ${v.step} ${v.fault} ${v.invariant} ${v.service}: ${v.details}`);
    expect(lines, lines.join('\n')).to.deep.equal([]);
  });

  it('acknowledged writes on both services', () => {
    expect(result!.acknowledged['fault-redis']).to.be.greaterThan(50);
    expect(result!.acknowledged['fault-pg']).to.be.greaterThan(50);
  });

  for (const known of KNOWN_FAILING)
    it(`fault kind ${known.kind} (skipped: ${known.reason})`, function () {
      this.skip();
    });
});
