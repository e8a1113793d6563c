import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../helpers/free-port';
import { ADMIN_TOKEN, startControlHarness, type ControlHarness } from '../helpers/control-harness';

const SF = join(__dirname, '..', '..', 'cli', 'sf.js');

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe('sf client commands', function () {
  let h: ControlHarness;
  let home: string;

  const sf = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, [SF, ...args], {
        env: { PATH: process.env.PATH ?? '', SF_CONTROL_URL: h.control.url, SF_HOME: home, ...env },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('exit', (code) => resolve({ code, stdout, stderr }));
    });

  before(async function () {
    h = await startControlHarness();
    home = mkdtempSync(join(tmpdir(), 'sf-home-'));
    // The token is found in the file `sf up` writes, with SF_API_TOKEN unset.
    writeFileSync(join(home, 'admin-token'), `${ADMIN_TOKEN}\n`);
  });
  after(async function () {
    await h.stop();
    rmSync(home, { recursive: true, force: true });
  });

  it('creates, lists and deletes a route with the token from SF_HOME', async function () {
    const created = await sf([
      'create-route',
      '--port',
      '16401',
      '--backend',
      '127.0.0.1:6379',
      '--backend',
      '127.0.0.1:6380',
      '--mode',
      'round-robin',
      '--json',
    ]);
    expect(created.code, created.stderr).to.equal(0);
    expect(JSON.parse(created.stdout)).to.have.length(2);
    const listed = await sf(['routes']);
    expect(listed.code).to.equal(0);
    expect(listed.stdout).to.match(/^PORT\s+GROUP\s+MODE/);
    expect(listed.stdout).to.include('127.0.0.1:6380');
    const deleted = await sf(['delete-route', '--port', '16401']);
    expect(deleted.code, deleted.stderr).to.equal(0);
    expect(JSON.parse((await sf(['routes', '--json'])).stdout)).to.deep.equal([]);
  });

  it('lists router groups', async function () {
    const res = await sf(['router-groups', '--json']);
    expect(JSON.parse(res.stdout)[0]).to.include({ name: 'default', reservable_ports: '16000-16999' });
  });

  it('exits 2 on invalid input and 1 on a refused operation', async function () {
    expect((await sf(['create-route', '--port', 'x', '--backend', '127.0.0.1:1'])).code).to.equal(2);
    expect((await sf(['create-route', '--port', '16402'])).code).to.equal(2);
    const bad = await sf(['create-route', '--port', '16402', '--backend', '127.0.0.1:1', '--weight', '5000']);
    expect(bad.code).to.equal(2);
    const denied = await sf(['routes'], { SF_API_TOKEN: 'not-a-token' });
    expect(denied.code).to.equal(1);
    expect(denied.stderr).to.include('bearer token');
    const down = await sf(['routes'], { SF_CONTROL_URL: `http://127.0.0.1:${await freePort()}` });
    expect(down.code).to.equal(1);
    expect(down.stderr).to.include('cannot reach control');
  });

  it('follows events until interrupted', async function () {
    const child = spawn(process.execPath, [SF, 'events', '--json'], {
      env: { PATH: process.env.PATH ?? '', SF_CONTROL_URL: h.control.url, SF_HOME: home },
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      // The stream is open once the server counts the subscriber; give the process time to start.
      const deadline = Date.now() + 5000;
      while (!out.includes('16403') && Date.now() < deadline) {
        await h.api('POST', '/routing/v1/tcp_routes/create', [
          { router_group_guid: h.defaultGroup, port: 16403, backend_ip: '127.0.0.1', backend_port: 1 },
        ]);
        await new Promise((r) => setTimeout(r, 200));
      }
      const first = JSON.parse(out.split('\n')[0]) as { type: string; route: { port: number } };
      expect(first.type).to.equal('Upsert');
      expect(first.route.port).to.equal(16403);
    } finally {
      child.kill('SIGINT');
      expect(await exited).to.equal(0);
      await h.api('POST', '/routing/v1/tcp_routes/delete', [
        { router_group_guid: h.defaultGroup, port: 16403, backend_ip: '127.0.0.1', backend_port: 1 },
      ]);
    }
  });
});
