/**
 * Starts a real PostgreSQL server on a free loopback port for one suite: initdb with `trust` for
 * loopback (test only), optionally `ssl = on` with a certificate. As root it runs as the
 * `postgres` system user, which PostgreSQL requires.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, chmodSync, chownSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './free-port';
import { waitForPort } from './redis-server';

export interface PostgresServerHandle {
  port: number;
  dir: string;
  stop(): Promise<void>;
}

function pgBin(name: string): string {
  const root = '/usr/lib/postgresql';
  const version = readdirSync(root).sort((a, b) => Number(b) - Number(a))[0];
  return join(root, version!, 'bin', name);
}

function postgresUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres']).toString().trim());
  return { uid: id('-u'), gid: id('-g') };
}

export async function startPostgresServer(tls?: { certFile: string; keyFile: string }): Promise<PostgresServerHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'sf-pg-test-'));
  const data = join(dir, 'data');
  const user = postgresUser();
  const as = user ? { uid: user.uid, gid: user.gid } : {};
  if (user) chownSync(dir, user.uid, user.gid);
  execFileSync(pgBin('initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync'], { ...as, stdio: 'ignore' });
  const port = await freePort();
  const conf = [
    `listen_addresses = '127.0.0.1'`,
    `port = ${port}`,
    `unix_socket_directories = '${dir}'`,
    'fsync = off',
  ];
  if (tls) {
    copyFileSync(tls.certFile, join(data, 'server.crt'));
    copyFileSync(tls.keyFile, join(data, 'server.key'));
    chmodSync(join(data, 'server.key'), 0o600);
    if (user) for (const f of ['server.crt', 'server.key']) chownSync(join(data, f), user.uid, user.gid);
    conf.push('ssl = on', "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'");
  }
  writeFileSync(join(data, 'postgresql.auto.conf'), conf.join('\n') + '\n');
  if (user) chownSync(join(data, 'postgresql.auto.conf'), user.uid, user.gid);
  const child: ChildProcess = spawn(pgBin('postgres'), ['-D', data], { ...as, stdio: ['ignore', 'ignore', 'ignore'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await waitForPort(port, '127.0.0.1', 20_000);
  return {
    port,
    dir,
    async stop() {
      if (child.exitCode === null) child.kill('SIGINT');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
