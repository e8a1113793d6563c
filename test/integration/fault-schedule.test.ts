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
      'postgres recovery waits for the old primary to be rewound and rejoined as the sync standby: 3.3 s at load 3, over the 10 s bound at load 25-44 (seed 302); the hole it found (no replica to promote) is fixed by restart-in-place',
  },
  {
    kind: 'cell-kill',
    reason:
      'one-primary is fixed (the restarted agent shoots a deposed primary before it registers), but postgres recovery needs a new replica by pg_basebackup: 12.5-14.1 s (seed 11, load 26)',
  },
  {
    kind: 'failover-planned',
    reason:
      'redis 144 ms p50 but 14.6 s p99 at load 25-44 (seed 302); postgres switchover waits for its rejoin and sync commit under load',
  },
  {
    kind: 'failover-to',
    reason:
      'the switchover path of failover-planned: sf failover took 50 s at load 44 (seed 20251), node itself 15 s to start',
  },
  {
    kind: 'fence-unfence',
    reason:
      'sf fence of postgres SIGKILLs the primary, so writes wait for crash recovery, pg_rewind and the standby start: 5.5-8.1 s at load 3, over 10 s under load',
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
