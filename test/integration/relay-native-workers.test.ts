import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { reusePortAvailable } from '../../router/reuseport';
import { freePort } from '../helpers/free-port';
import { startRouter, type RouterHarness } from '../helpers/router-harness';
import { startNamedServer, type TestServer } from '../helpers/tcp-servers';
import { connectTo, eventually, readLine } from '../helpers/tcp-client';

const SF = join(__dirname, '..', '..', 'cli', 'sf.js');

/** A free port P whose neighbour P+1 is free too (worker k's admin port is P+k). */
async function freePortPair(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (port < 65535 && (await portIsFree(port + 1))) return port;
  }
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

async function health(port: number): Promise<{ relay?: string } | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    return (await res.json()) as { relay?: string };
  } catch {
    return undefined;
  }
}

const available = reusePortAvailable();
const describeAvailable = available ? describe : describe.skip;

// Two Routers in one process stand in for two `--workers` processes: SO_REUSEPORT groups
// sockets of the same user whether or not they share a process.
describeAvailable(
  available ? 'router workers on one port' : 'router workers on one port (skipped: the addon is not built)',
  function () {
    // Room for the `--workers 2` case below, which waits up to 45 s for its processes to start.
    this.timeout(90_000);
    let backend: TestServer;
    const routers: RouterHarness[] = [];

    after(async () => {
      for (const r of routers) await r.stop();
      await backend?.stop();
    });

    it('lets two routers with reusePort serve the same route port, both taking connections', async () => {
      backend = await startNamedServer('b1');
      const port = await freePort();
      const table = { version: 1, routes: [{ port, backends: [{ id: 'b1', host: '127.0.0.1', port: backend.port }] }] };
      routers.push(await startRouter(table, { reusePort: true }));
      routers.push(await startRouter(table, { reusePort: true }));
      for (let i = 0; i < 40; i++) {
        const client = await connectTo(port);
        expect(await readLine(client)).to.equal('b1');
        client.destroy();
      }
      const served = routers.map((r) => r.router.routeStats().find((s) => s.port === port)!.total);
      expect(served[0]! + served[1]!).to.equal(40);
      expect(served[0]).to.be.above(0);
      expect(served[1]).to.be.above(0);
    });

    it('refuses a reuse-port listener on a port a plain listener holds', async () => {
      const port = await freePort();
      const table = { version: 1, routes: [{ port, backends: [{ id: 'b1', host: '127.0.0.1', port: backend.port }] }] };
      routers.push(await startRouter(table));
      let failed: unknown;
      try {
        routers.push(await startRouter(table, { reusePort: true }));
      } catch (err) {
        failed = err;
      }
      expect(failed).to.have.property('code', 'SF_ERR_LISTEN_FAILED');
    });

    it('runs `sf router --workers 2`: two workers on the route port, admin ports P and P+1, one SIGTERM stops all', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'sf-workers-'));
      const routePort = await freePort();
      const adminPort = await freePortPair();
      const file = join(dir, 'routes.json');
      writeFileSync(
        file,
        JSON.stringify({
          version: 1,
          routes: [{ port: routePort, backends: [{ host: '127.0.0.1', port: backend.port }] }],
        }),
      );
      const supervisor = spawn(
        process.execPath,
        [SF, 'router', '--routes', file, '--admin', `127.0.0.1:${adminPort}`, '--workers', '2'],
        {
          env: { ...process.env, SF_LOG_LEVEL: 'warn' },
          stdio: 'ignore',
          // Its own process group: a failed case stops the workers too, not only the supervisor.
          detached: true,
        },
      );
      const exited = new Promise<number | null>((resolve) => supervisor.once('exit', (code) => resolve(code)));
      try {
        // A supervisor and two worker processes each load the whole CLI: on a loaded 2-core machine
        // (load average 30-50) that took 15-20 s in a row, so 20 s failed now and then.
        await eventually(
          async () => (await health(adminPort)) !== undefined && (await health(adminPort + 1)) !== undefined,
          45_000,
          'both workers up',
        );
        // The workers inherit SF_RELAY, so the suite's run with SF_RELAY=js expects the JS relay.
        expect((await health(adminPort))?.relay).to.equal(process.env.SF_RELAY === 'js' ? 'js' : 'native');
        for (let i = 0; i < 10; i++) {
          const client = await connectTo(routePort);
          expect(await readLine(client)).to.equal('b1');
          client.destroy();
        }
        supervisor.kill('SIGTERM');
        expect(await exited).to.equal(0);
        expect(await health(adminPort)).to.equal(undefined);
        expect(await health(adminPort + 1)).to.equal(undefined);
      } finally {
        try {
          if (supervisor.pid) process.kill(-supervisor.pid, 'SIGKILL');
        } catch {
          // Already gone with its workers (the SIGTERM above stopped them all).
        }
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);
