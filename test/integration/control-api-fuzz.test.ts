/**
 * Property-based fuzzing of the control API: generated JSON bodies to every write
 * endpoint and generated paths to every route, against a live control. Every answer comes in time,
 * none is a 500, every error is the registry's JSON body, and control still answers /health.
 * bench/fuzz-control-api.ts runs the same properties 100,000 times.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { jsonBodyArbitrary, methodArbitrary, pathArbitrary, rawBodyArbitrary, sendAndJudge } from '../helpers/api-fuzz';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';

const RUNS = Number(process.env.SF_FUZZ_RUNS ?? 2000);

describe('control API fuzzing', function () {
  this.timeout(300_000);
  let h: ControlHarness;
  const tally = new Map<string, number>();
  const count = (status: number, code: string | null) => {
    const key = `${status}${code ? ` ${code}` : ''}`;
    tally.set(key, (tally.get(key) ?? 0) + 1);
  };

  before(async () => {
    h = await startControlHarness();
  });
  after(async () => {
    console.log(`      answers: ${JSON.stringify(Object.fromEntries([...tally].sort()))}`);
    await h.stop();
  });

  it(`answers ${RUNS} generated JSON bodies to the write endpoints with registry errors`, async function () {
    const writes = h.control.endpoints.filter((e) => e.method !== 'GET');
    expect(writes.length).to.be.at.least(10);
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...writes),
        fc.oneof(
          jsonBodyArbitrary.map((v) => JSON.stringify(v) ?? 'null'),
          rawBodyArbitrary,
        ),
        fc.constantFrom<string | null>(ADMIN_TOKEN, ADMIN_TOKEN, null),
        fc.constantFrom('x', 'default', 'no-such'),
        async (endpoint, body, token, param) => {
          const target = endpoint.pattern.replace(/:[A-Za-z_]+/g, param);
          const outcome = await sendAndJudge(h.control.port, endpoint.method, target, token, body);
          count(outcome.status, outcome.code);
          if (outcome.problem) throw new Error(`${endpoint.method} ${target}: ${outcome.problem}`);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it(`answers ${RUNS} generated paths with registry errors`, async function () {
    await fc.assert(
      fc.asyncProperty(
        methodArbitrary,
        pathArbitrary(h.control.endpoints),
        fc.constantFrom<string | null>(ADMIN_TOKEN, null),
        fc.option(jsonBodyArbitrary, { nil: undefined }),
        async (method, target, token, body) => {
          const payload = method === 'GET' || body === undefined ? undefined : (JSON.stringify(body) ?? 'null');
          const outcome = await sendAndJudge(h.control.port, method, target, token, payload);
          count(outcome.status, outcome.code);
          if (outcome.problem) throw new Error(`${method} ${target.slice(0, 200)}: ${outcome.problem}`);
        },
      ),
      { numRuns: RUNS },
    );
    const health = await h.api<{ ok: boolean }>('GET', '/health', undefined, null);
    expect(health.status).to.equal(200);
  });
});
