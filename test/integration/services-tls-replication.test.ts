/**
 * Engines with certificates (docs/tls.md): cells started with the platform CA give PostgreSQL
 * instances `ssl = on`, replicas stream from their primary with `sslmode=verify-full`, and a
 * replication connection without TLS is refused. A failover (primary SIGKILLed) still works: the
 * replica is promoted, the old primary is rewound over TLS and streams again over TLS. Real
 * PostgreSQL, psql and cells throughout.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { ServiceView } from '../../control/services';
import { type InstanceSpec } from '../../protocol/cell-protocol';
import { keyLayout } from '../../protocol/keys';
import { adminUser, enginePid, primaryOf, promotedFrom } from '../helpers/failover-support';
import { useServiceCluster } from '../helpers/service-cluster';
import { serviceKey, type ServiceKeyAuth } from '../helpers/service-key';

const PSQL = '/usr/lib/postgresql/15/bin/psql';
const KEYS = keyLayout();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function psql(conninfo: string, sql: string, password: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      PSQL,
      [conninfo, '-XAtq', '-c', sql],
      { timeout: 20_000, env: { PATH: process.env.PATH ?? '', PGPASSWORD: password, PGCONNECT_TIMEOUT: '5' } },
      (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout: stdout.trim(), stderr }),
    );
  });
}

describe('PostgreSQL replication over TLS', function () {
  this.timeout(400_000);
  const dir = mkdtempSync(join(tmpdir(), 'sf-tls-repl-'));
  const caDir = join(dir, 'ca');
  const caFile = join(caDir, 'ca.crt');
  // Control (in-process, started first) creates the CA in caDir; the cells then take it.
  const cluster = useServiceCluster({
    cells: 2,
    services: { platformCa: { dir: caDir } },
    cellArgs: ['--ca-dir', caDir],
  });
  let key: ServiceKeyAuth;
  let view: ServiceView;

  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Whether the primary's walsender serves its standby over TLS, asked as the platform's user. */
  async function replicationSsl(v: ServiceView): Promise<string> {
    const primary = primaryOf(v);
    const admin = await adminUser(cluster(), v, primary.id);
    const r = await psql(
      `host=127.0.0.1 port=${primary.port} user=${admin.username} dbname=postgres sslmode=disable`,
      'select s.ssl, s.version from pg_stat_replication r join pg_stat_ssl s using (pid)',
      admin.password,
    );
    return r.code === 0 ? r.stdout : `ERROR ${r.stderr}`;
  }

  async function throughRouter(v: ServiceView, sql: string): Promise<Run> {
    return psql(
      `host=127.0.0.1 port=${v.port} user=${key.username} dbname=postgres sslmode=verify-full sslrootcert=${caFile}`,
      sql,
      key.password,
    );
  }

  it('streams to the replica over TLS verified against the platform CA', async () => {
    const res = await cluster().api('POST', '/v3/service_instances', {
      name: 'pgr',
      engine: 'postgres',
      replicas: 1,
      volume: { size_mb: 64 },
    });
    expect(res.status, JSON.stringify(res.body)).to.equal(201);
    view = await cluster().waitForService(
      'pgr',
      240_000,
      (s) => s.status === 'running' && s.instances.every((i) => i.state === 'running'),
    );
    key = await serviceKey(cluster().api, 'pgr');
    let last: string;
    const deadline = Date.now() + 30_000;
    while (!/^t\|TLSv1\.[23]$/.test((last = await replicationSsl(view)))) {
      if (Date.now() > deadline) throw new Error(`replication not over TLS: ${last}`);
      await new Promise((r) => setTimeout(r, 300));
    }
    const write = await throughRouter(view, 'create table t (v int); insert into t values (1)');
    expect(write.code, write.stderr).to.equal(0);
  });

  it('refuses a replication connection without TLS', async () => {
    const primary = primaryOf(view);
    const text = await cluster().state.hget(KEYS.cell(primary.cell).desired, primary.id);
    const repl = (JSON.parse(text!) as InstanceSpec).credentials!.replication;
    const plain = await psql(
      `host=127.0.0.1 port=${primary.port} user=${repl.username} dbname=postgres replication=true sslmode=disable`,
      'IDENTIFY_SYSTEM',
      repl.password,
    );
    expect(plain.code).to.equal(1);
    expect(plain.stderr).to.match(/no pg_hba\.conf entry/);
    const tls = await psql(
      `host=127.0.0.1 port=${primary.port} user=${repl.username} dbname=postgres replication=true sslmode=verify-full sslrootcert=${caFile}`,
      'IDENTIFY_SYSTEM',
      repl.password,
    );
    expect(tls.code, tls.stderr).to.equal(0);
  });

  it('fails over with TLS on: the old primary is rewound and streams again over TLS', async () => {
    const old = primaryOf(view);
    process.kill(await enginePid(cluster(), view, old.id), 'SIGKILL');
    const after = await cluster().waitForService('pgr', 180_000, promotedFrom(old.id, view.epoch));
    expect(primaryOf(after).id).to.not.equal(old.id);
    let last: string;
    const deadline = Date.now() + 60_000;
    while (!/^t\|TLSv1\.[23]$/.test((last = await replicationSsl(after)))) {
      if (Date.now() > deadline) throw new Error(`replication after failover not over TLS: ${last}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const write = await throughRouter(after, 'insert into t values (2); select count(*) from t');
    expect(write.code, write.stderr).to.equal(0);
    expect(write.stdout).to.equal('2');
  });
});
