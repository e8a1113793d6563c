import { execFile } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';

const SF = path.join(__dirname, '..', '..', '..', 'cli', 'sf.js');

/** Runs `sf` against a control nobody listens on: these errors must come before any request. */
function sf(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [SF, ...args],
      { env: { ...process.env, SF_CONTROL_URL: 'http://127.0.0.1:1', SF_API_TOKEN: 'unused' } },
      (err, _stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
    );
  });
}

describe('sf usage errors', function () {
  this.timeout(20_000);

  it('names --command when a tcp service has none', async () => {
    const res = await sf(['create-service', 'tcp', 't1']);
    expect(res.code).to.equal(2);
    expect(res.stderr).to.match(/engine tcp needs --command/);
  });

  it('says "at least 1" for --size-mb 0, not a range up to 2^53', async () => {
    const res = await sf(['create-service', 'redis', 'r1', '--size-mb', '0']);
    expect(res.code).to.equal(2);
    expect(res.stderr.trim()).to.equal("sf: --size-mb must be an integer of at least 1, got '0'");
  });

  it('refuses a sidecar of another engine, an unknown one and a bad --cpus before any request', async () => {
    const other = await sf(['create-service', 'postgres', 'p1', '--sidecar', 'redis-exporter']);
    expect(other.code).to.equal(2);
    expect(other.stderr.trim()).to.equal('sf: --sidecar redis-exporter serves engine redis, not postgres');
    const unknown = await sf(['create-service', 'redis', 'r1', '--sidecar', 'node-exporter']);
    expect(unknown.code).to.equal(2);
    expect(unknown.stderr).to.contain('--sidecar must be one of redis-exporter, postgres-exporter');
    const cpus = await sf(['create-service', 'redis', 'r1', '--cpus', '-1']);
    expect(cpus.code).to.equal(2);
    expect(cpus.stderr).to.contain('--cpus must be a positive number');
  });

  it('refuses a client certificate without its key (or the reverse) for sf prometheus-config before any request', async () => {
    for (const flag of ['--client-cert', '--client-key']) {
      const res = await sf(['prometheus-config', flag, '/tmp/some.pem']);
      expect(res.code, flag).to.equal(2);
      expect(res.stderr.trim()).to.equal('sf: --client-cert and --client-key go together');
    }
  });

  it("points a subcommand's flag mistakes at that subcommand's help", async () => {
    const res = await sf(['create-service', 'redis', 'r1', '--durability', 'maybe']);
    expect(res.code).to.equal(2);
    expect(res.stderr).to.include('(run sf create-service --help for usage)');
    const unknown = await sf(['fence']);
    expect(unknown.code).to.equal(2);
    expect(unknown.stderr).to.include('(run sf fence --help for usage)');
  });
});
