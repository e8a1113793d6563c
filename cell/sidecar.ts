/**
 * Sidecars: what an instance's pod holds besides its engine. A sidecar shares the instance's
 * network and volume, starts once the engine answers and stops with it, and listens on a port of
 * the cell's range that the cell reports (`ActualInstance.sidecars`). Both executors run the same
 * sidecars: the process executor as processes (sidecar-process.ts), the docker executor as
 * containers of the engine's image (sidecar-docker.ts).
 *
 * The two shipped are Debian's Prometheus exporters. They reach the engine as the service's
 * monitoring user (a Redis ACL user limited to INFO and the like, a PostgreSQL role in
 * pg_monitor), never the platform's management user. Its password is in a secrets file of the
 * volume (mode 0600, owned by the sidecar's user) that the exporter reads by name
 * (`REDIS_PASSWORD_FILE`, `DATA_SOURCE_PASS_FILE`): not in argv, not in the environment, so
 * neither `/proc/PID/environ` nor `docker inspect` shows it.
 */
import { existsSync } from 'node:fs';
import { chown, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import type { SidecarActual, SidecarKind } from '../protocol';
import type { EngineContext } from './engine';
import { findBinary, type RunAs } from './run-command';
import { copyTlsFiles, engineTlsPaths, type EngineTlsFiles, type EngineTlsPaths } from './engine-tls';
import { redisSocketPath } from './engine-redis';

export interface SidecarDefinition {
  kind: SidecarKind;
  /** The executable, on PATH on the host (process executor) and in the engine's image (docker). */
  binary: string;
  /** Where Prometheus scrapes it. */
  metricsPath: string;
  /**
   * Arguments and environment (what to scrape, where to listen, the secrets file's name) and the
   * secret to write into `secretFile` before the start; `error` when it cannot run as it should.
   * With `tls` the sidecar serves HTTPS with those files and requires a client certificate the
   * platform CA signed.
   */
  launch(
    ctx: EngineContext,
    listen: { host: string; port: number },
    secretFile: string,
    tls?: SidecarTlsPaths,
  ): SidecarLaunch;
}

export type SidecarLaunch =
  | {
      args: string[];
      env: Record<string, string>;
      secret?: string;
      /** Files the sidecar reads (its web configuration), written beside the secret. */
      files?: Array<{ path: string; content: string }>;
      error?: undefined;
    }
  | { error: string };

/**
 * The copies of the cell's certificate, key and the platform CA a sidecar serves HTTPS with, in
 * the instance's volume: the sidecar runs as the engine's user (and on docker sees only the
 * volume), and the cell's key is readable by the cell alone.
 */
export type SidecarTlsPaths = EngineTlsPaths;

export function sidecarTlsPaths(volumeDir: string): SidecarTlsPaths {
  const dir = path.join(volumeDir, 'sidecar-tls');
  return { dir, cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key'), ca: path.join(dir, 'ca.crt') };
}

/** postgres_exporter's web configuration: HTTPS, and only for clients with a certificate of the CA. */
function exporterWebConfig(tls: SidecarTlsPaths): string {
  return [
    'tls_server_config:',
    `  cert_file: ${JSON.stringify(tls.cert)}`,
    `  key_file: ${JSON.stringify(tls.key)}`,
    '  client_auth_type: RequireAndVerifyClientCert',
    `  client_ca_file: ${JSON.stringify(tls.ca)}`,
    '  min_version: TLS12',
    '',
  ].join('\n');
}

/**
 * The monitoring user, when the service has credentials. A service with credentials but no
 * monitoring user (created before it existed) gets no exporter: the platform's admin password is
 * not handed to one.
 */
function monitoringUser(ctx: EngineContext): { username: string; password: string } | undefined | Error {
  const creds = ctx.spec.credentials;
  if (!creds) return undefined;
  return creds.monitoring ?? new Error('the service has no monitoring user (created before they existed)');
}

/** Where the cell and its sidecars reach an engine bound to `listenHost`. */
function engineHost(ctx: EngineContext): string {
  return ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost;
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export const SIDECARS: Record<SidecarKind, SidecarDefinition> = {
  'redis-exporter': {
    kind: 'redis-exporter',
    binary: 'prometheus-redis-exporter',
    metricsPath: '/metrics',
    launch(ctx, listen, secretFile, web) {
      const user = monitoringUser(ctx);
      if (user instanceof Error) return { error: user.message };
      // The engine's unix socket when it has one (redisSocketPath says why); else TCP, and an
      // engine serving TLS (its CA copy is in the volume) is verified against the platform CA,
      // which works where the engine listens on an address its certificate names (loopback),
      // and is shown the engine's own certificate, since the engine requires one of every client.
      const socket = redisSocketPath(ctx.dataDir);
      const ca = engineTlsPaths(ctx.volumeDir).ca;
      const viaSocket = socket !== undefined && existsSync(socket);
      const tls = !viaSocket && ctx.spec.tls === true && existsSync(ca);
      const addr = viaSocket
        ? `unix://${socket}`
        : `${tls ? 'rediss' : 'redis'}://${hostPort(engineHost(ctx), ctx.port)}`;
      return {
        args: [],
        env: {
          REDIS_ADDR: addr,
          ...(tls
            ? {
                REDIS_EXPORTER_TLS_CA_CERT_FILE: ca,
                REDIS_EXPORTER_TLS_CLIENT_CERT_FILE: engineTlsPaths(ctx.volumeDir).cert,
                REDIS_EXPORTER_TLS_CLIENT_KEY_FILE: engineTlsPaths(ctx.volumeDir).key,
              }
            : {}),
          REDIS_EXPORTER_WEB_LISTEN_ADDRESS: hostPort(listen.host, listen.port),
          ...(web
            ? {
                REDIS_EXPORTER_TLS_SERVER_CERT_FILE: web.cert,
                REDIS_EXPORTER_TLS_SERVER_KEY_FILE: web.key,
                // Set: a client without a certificate the platform CA signed is refused.
                REDIS_EXPORTER_TLS_SERVER_CA_CERT_FILE: web.ca,
                REDIS_EXPORTER_TLS_SERVER_MIN_VERSION: 'TLS1.2',
              }
            : {}),
          ...(user ? { REDIS_USER: user.username, REDIS_PASSWORD_FILE: secretFile } : {}),
        },
        // redis_exporter's password file maps each address to its password (JSON).
        ...(user ? { secret: JSON.stringify({ [addr]: user.password }) } : {}),
      };
    },
  },
  'postgres-exporter': {
    kind: 'postgres-exporter',
    binary: 'prometheus-postgres-exporter',
    metricsPath: '/metrics',
    launch(ctx, listen, secretFile, web) {
      const user = monitoringUser(ctx);
      if (user instanceof Error) return { error: user.message };
      const webConfig = web ? path.join(web.dir, 'web-config.yml') : undefined;
      // On loopback in plaintext, as the cell's own probes (pg_hba.conf allows it there). Where
      // the engine listens on another address, an engine with a certificate takes TLS only, with
      // a client certificate the platform CA signed: the exporter presents the engine's own copy
      // and checks the engine's chain against the CA (not its name: the certificate names the
      // service, and lib/pq cannot be told which name to expect).
      const host = engineHost(ctx);
      const files = engineTlsPaths(ctx.volumeDir);
      const tls = !isLoopbackHost(host) && existsSync(files.ca) && existsSync(files.cert);
      const ssl = tls
        ? `sslmode=verify-ca&sslrootcert=${encodeURIComponent(files.ca)}&sslcert=${encodeURIComponent(files.cert)}&sslkey=${encodeURIComponent(files.key)}`
        : 'sslmode=disable';
      return {
        args: webConfig ? [`--web.config.file=${webConfig}`] : [],
        ...(web && webConfig ? { files: [{ path: webConfig, content: exporterWebConfig(web) }] } : {}),
        env: {
          DATA_SOURCE_URI: `${hostPort(host, ctx.port)}/postgres?${ssl}`,
          // Without credentials the cluster trusts local connections (tests of the cell alone).
          DATA_SOURCE_USER: user?.username ?? 'postgres',
          ...(user ? { DATA_SOURCE_PASS_FILE: secretFile } : {}),
          PG_EXPORTER_WEB_LISTEN_ADDRESS: hostPort(listen.host, listen.port),
        },
        ...(user ? { secret: user.password } : {}),
      };
    },
  },
};

/** What a running sidecar is: its kind, port and process (null when only its container is known). */
export type SidecarHandle = SidecarActual;

/** Starts, stops and re-adopts an instance's sidecars for one executor. */
export interface SidecarRunner {
  /**
   * Starts the spec's sidecars of a healthy instance and resolves once each listens (or failed:
   * a sidecar that does not come up is logged in the volume, never a reason to fail the engine).
   * `previous` are the ports they had, kept when still free so scrape targets stay put.
   */
  start(ctx: EngineContext, owner: RunAs | undefined, previous: SidecarHandle[]): Promise<SidecarHandle[]>;
  /** Stops the instance's sidecars (all of them, also those of an earlier life of the cell). */
  stop(instanceId: string): Promise<void>;
  /**
   * Tracks again the sidecars recorded for a re-adopted instance and starts those of its spec
   * that died meanwhile (a sidecar holds no state, so starting it again decides nothing).
   */
  adopt(ctx: EngineContext, owner: RunAs | undefined, recorded: SidecarHandle[]): Promise<SidecarHandle[]>;
}

/** The log file of a sidecar, in the instance's volume, kept apart from the engine's. */
export function sidecarLogName(kind: SidecarKind): string {
  return `sidecar-${kind}.log`;
}

/** The sidecars whose binaries this host has: what the cell can run as processes. */
export async function availableSidecars(): Promise<SidecarKind[]> {
  const kinds: SidecarKind[] = [];
  for (const def of Object.values(SIDECARS)) if (await findBinary(def.binary)) kinds.push(def.kind);
  return kinds;
}

/** The secrets file of a sidecar, in the instance's volume (bind-mounted at the same path on docker). */
export function sidecarSecretFile(volumeDir: string, kind: SidecarKind): string {
  return path.join(volumeDir, `sidecar-${kind}.secret`);
}

/**
 * Writes (or, without a secret, removes) a sidecar's secrets file: mode 0600, owned by the user
 * the sidecar runs as, replaced whole so an older password never lingers.
 */
export async function writeSidecarSecret(
  file: string,
  secret: string | undefined,
  owner: RunAs | undefined,
): Promise<void> {
  await rm(file, { force: true });
  if (secret === undefined) return;
  await writeFile(file, secret, { mode: 0o600, flag: 'wx' });
  if (owner) await chown(file, owner.uid, owner.gid);
}

/**
 * What both runners do before a sidecar starts: its launch (HTTPS with the cell's certificate
 * when the cell has one, copied into the volume for the sidecar's user), its secret and its files
 * written for `owner`. A copy that fails is the launch's error, never the engine's.
 */
export async function prepareSidecar(
  def: SidecarDefinition,
  ctx: EngineContext,
  listen: { host: string; port: number },
  owner: RunAs | undefined,
  tls: EngineTlsFiles | undefined,
): Promise<SidecarLaunch> {
  const secretFile = sidecarSecretFile(ctx.volumeDir, def.kind);
  const web = tls ? sidecarTlsPaths(ctx.volumeDir) : undefined;
  const launch = def.launch(ctx, listen, secretFile, web);
  if (launch.error !== undefined) return launch;
  try {
    if (tls && web) await copyTlsFiles(tls, web, owner);
  } catch (err) {
    return { error: `cannot copy the cell's certificate for HTTPS: ${(err as Error).message}` };
  }
  await writeSidecarSecret(secretFile, launch.secret, owner);
  for (const file of launch.files ?? []) {
    await writeFile(file.path, file.content, { mode: 0o600 });
    if (owner) await chown(file.path, owner.uid, owner.gid);
  }
  return launch;
}

/** The address a sidecar listening on `host` is reached at from the cell. */
export function sidecarConnectHost(host: string): string {
  return host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
}

/** Resolves true once `host:port` accepts a connection, false after `timeoutMs` or when `gone()`. */
export async function waitListening(
  host: string,
  port: number,
  timeoutMs: number,
  gone: () => boolean,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !gone()) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: sidecarConnectHost(host), port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
