/**
 * What one management statement costs the cell on a docker PostgreSQL: through `docker exec
 * psql` (how the cell ran its health checks, position reads, commit checks, `pg_ctl promote` and
 * role changes in containers before) against the cell's kept management connection
 * (cell/pg-client.ts, how it runs them now), on the same container at the same moment, rounds
 * interleaved. Also the whole application of a credentials set with one new key
 * (`applyCredentials`: the position read, the roles read and the role script), which before was
 * three `docker exec psql`.
 *
 *   node dist/bench/pg-statement-cost.js [--rounds N]
 *
 * Needs the Docker daemon of the test helpers (a private one is started when none answers).
 */
import { loadavg } from 'node:os';
import { DockerExecutor } from '../cell/executor-docker';
import { createEngineRegistry } from '../cell/engine-registry';
import { closePgConnections, pgQuery } from '../cell/pg-client';
import type { InstanceCredentials } from '../protocol';
import { spec, tempCellDir } from '../test/helpers/cell-harness';
import { releaseDockerDaemon, useDockerDaemon } from '../test/helpers/docker-daemon';
import { formatNumber, formatTable, median } from './lib/report';

const CREDS: InstanceCredentials = {
  version: 1,
  admin: { username: 'sf_admin', password: 'admin-password-statement-cost-0123' },
  replication: { username: 'sf_replication', password: 'replication-password-0123' },
  users: [],
};

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const rounds = Number(flag('--rounds') ?? 10);
  if (!Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write('pg-statement-cost: --rounds must be a positive integer\n');
    process.exit(2);
  }
  const daemon = await useDockerDaemon();
  if (typeof daemon === 'string') {
    console.error(`pg-statement-cost: no Docker daemon: ${daemon}`);
    process.exitCode = 1;
    return;
  }
  const cell = await tempCellDir();
  const engines = createEngineRegistry();
  const executor = new DockerExecutor({
    dataDir: cell.dir,
    portRange: { from: 45100, to: 45199 },
    docker: { socketPath: daemon.socketPath },
    engines,
  });
  const loadBefore = loadavg();
  const exec: number[] = [];
  const conn: number[] = [];
  const keys: number[] = [];
  try {
    const handle = await executor.start(spec({ instanceId: 'cost-0', engine: 'postgres', credentials: CREDS }));
    const ctx = handle.context;
    const psqlArgs = ['-h', '127.0.0.1', '-p', String(ctx.port), '-U', 'postgres', '-d', 'postgres', '-XAtq'];
    const env = { PGPASSWORD: CREDS.admin.password };
    const target = {
      host: '127.0.0.1',
      port: ctx.port,
      user: 'postgres',
      database: 'postgres',
      password: CREDS.admin.password,
      applicationName: 'sf-bench',
    };
    for (let round = 0; round < rounds; round++) {
      exec.push(await timed(() => ctx.tools!.run('psql', [...psqlArgs, '-c', 'select 1'], { env, timeoutMs: 60_000 })));
      conn.push(await timed(() => pgQuery(target, 'select 1', 60_000)));
      const creds = {
        ...CREDS,
        version: round + 2,
        users: [{ username: `key-${round}`, password: `key-password-${round}-0123456789` }],
      };
      const withKey = { ...ctx, spec: { ...ctx.spec, credentials: creds } };
      keys.push(await timed(() => engines.postgres.applyCredentials!(withKey)));
    }
  } finally {
    closePgConnections();
    await executor.kill('cost-0').catch(() => undefined);
    await cell.remove();
    await releaseDockerDaemon();
  }
  const loadAfter = loadavg();
  const statementsPerKey = 3;
  console.log(
    formatTable(
      ['measure', 'median (ms)', 'samples (ms)'],
      [
        [
          'one statement through docker exec psql (before)',
          formatNumber(median(exec)),
          exec.map((v) => v.toFixed(0)).join(' '),
        ],
        [
          'one statement over the management connection (now)',
          formatNumber(median(conn)),
          conn.map((v) => v.toFixed(0)).join(' '),
        ],
        [
          `key apply before: ${statementsPerKey} x docker exec psql (estimate)`,
          formatNumber(statementsPerKey * median(exec)),
          '',
        ],
        [
          'key apply now: applyCredentials with one new key',
          formatNumber(median(keys)),
          keys.map((v) => v.toFixed(0)).join(' '),
        ],
      ],
    ),
  );
  console.log(
    `load average: ${loadBefore.map((l) => l.toFixed(2)).join(' ')} before, ${loadAfter.map((l) => l.toFixed(2)).join(' ')} after`,
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
