/**
 * Question: does a live control answer 100,000 generated requests (JSON bodies to every write
 * endpoint, paths with broken percent-encodings to every route) each in time, never with a 500,
 * every error the registry's JSON body, and still pass /health afterwards?
 *
 *   node dist/bench/fuzz-control-api.js [--runs N] [--seed S]
 *
 * Prints the answers by status and code and writes bench/results/fuzz-control-api.json. Not part
 * of the test suite (test/integration/control-api-fuzz.test.ts runs the same properties briefly).
 */
import fc from 'fast-check';
import pino from 'pino';
import { startControlServer } from '../control/control-server';
import {
  jsonBodyArbitrary,
  methodArbitrary,
  pathArbitrary,
  rawBodyArbitrary,
  sendAndJudge,
} from '../test/helpers/api-fuzz';
import { startRedisServer } from '../test/helpers/redis-server';
import { formatNumber, formatTable, writeResults } from './lib/report';

const TOKEN = 'bench-admin-token-0123456789';

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

async function main(): Promise<void> {
  const runs = flag('--runs', 100_000);
  const seed = flag('--seed', Date.now() % 2 ** 31);
  const redis = await startRedisServer();
  const control = await startControlServer({
    redisUrl: redis.url,
    port: 0,
    adminToken: TOKEN,
    logger: pino({ level: 'silent' }),
  });
  const tally = new Map<string, number>();
  const problems: string[] = [];
  let slowestMs = 0;
  const judge = async (method: string, target: string, token: string | null, body?: Buffer | string) => {
    const t0 = performance.now();
    const outcome = await sendAndJudge(control.port, method, target, token, body);
    slowestMs = Math.max(slowestMs, performance.now() - t0);
    const key = `${outcome.status}${outcome.code ? ` ${outcome.code}` : ''}`;
    tally.set(key, (tally.get(key) ?? 0) + 1);
    // Every problem is recorded, and the run goes on: the count is the answer.
    if (outcome.problem && problems.length < 50) problems.push(`${method} ${target.slice(0, 120)}: ${outcome.problem}`);
  };
  const writes = control.endpoints.filter((e) => e.method !== 'GET');
  const half = Math.floor(runs / 2);
  const started = performance.now();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...writes),
        fc.oneof(
          jsonBodyArbitrary.map((v) => JSON.stringify(v) ?? 'null'),
          rawBodyArbitrary,
        ),
        fc.constantFrom<string | null>(TOKEN, TOKEN, null),
        fc.constantFrom('x', 'default', 'no-such'),
        async (endpoint, body, token, param) =>
          judge(endpoint.method, endpoint.pattern.replace(/:[A-Za-z_]+/g, param), token, body),
      ),
      { numRuns: half, seed },
    );
    await fc.assert(
      fc.asyncProperty(
        methodArbitrary,
        pathArbitrary(control.endpoints),
        fc.constantFrom<string | null>(TOKEN, null),
        fc.option(jsonBodyArbitrary, { nil: undefined }),
        async (method, target, token, body) =>
          judge(
            method,
            target,
            token,
            method === 'GET' || body === undefined ? undefined : (JSON.stringify(body) ?? 'null'),
          ),
      ),
      { numRuns: runs - half, seed: seed + 1 },
    );
    const health = await fetch(`${control.url}/health`);
    const seconds = (performance.now() - started) / 1000;
    const rows = [...tally].sort().map(([k, n]) => [k, n.toLocaleString('en-US')]);
    console.log(`fuzz-control-api: ${formatNumber(runs)} requests in ${seconds.toFixed(1)} s (seed ${seed})\n`);
    console.log(formatTable(['answer', 'count'], rows));
    console.log(
      `\nproblems: ${problems.length}; slowest answer ${slowestMs.toFixed(0)} ms; /health after: ${health.status}`,
    );
    for (const p of problems) console.log(`  ${p}`);
    const path = writeResults('fuzz-control-api', {
      runs,
      seed,
      seconds,
      slowestMs,
      healthAfter: health.status,
      answers: Object.fromEntries(tally),
      problems,
    });
    console.log(`results: ${path}`);
    if (problems.length > 0 || health.status !== 200) process.exitCode = 1;
  } finally {
    await control.close();
    await redis.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
