/**
 * Sidecars: what an instance's pod holds besides its engine. A sidecar shares the instance's
 * network and volume, starts once the engine answers and stops with it, and listens on a port of
 * the cell's range that the cell reports (`ActualInstance.sidecars`). Both executors run the same
 * sidecars: the process executor as processes (sidecar-process.ts), the docker executor as
 * containers of the engine's image (sidecar-docker.ts).
 *
 * The two shipped are Debian's Prometheus exporters. They reach the engine as the platform's
 * management user; its password travels in the sidecar's environment only, never in argv.
 */
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import type { SidecarActual, SidecarKind } from '../protocol';
import type { EngineContext } from './engine';
import type { RunAs } from './run-command';
import { engineTlsPaths } from './engine-tls';

export interface SidecarDefinition {
  kind: SidecarKind;
  /** The executable, on PATH on the host (process executor) and in the engine's image (docker). */
  binary: string;
  /** Where Prometheus scrapes it. */
  metricsPath: string;
  /** Arguments and environment: what to scrape and where to listen. */
  launch(ctx: EngineContext, listen: { host: string; port: number }): { args: string[]; env: Record<string, string> };
}

/** Where the cell and its sidecars reach an engine bound to `listenHost`. */
function engineHost(ctx: EngineContext): string {
  return ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost;
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export const SIDECARS: Record<SidecarKind, SidecarDefinition> = {
  'redis-exporter': {
    kind: 'redis-exporter',
    binary: 'prometheus-redis-exporter',
    metricsPath: '/metrics',
    launch(ctx, listen) {
      const admin = ctx.spec.credentials?.admin;
      // An engine serving TLS (its CA copy is in the volume) is verified against the platform CA.
      const ca = engineTlsPaths(ctx.volumeDir).ca;
      const tls = ctx.spec.tls === true && existsSync(ca);
      return {
        args: [],
        env: {
          REDIS_ADDR: `${tls ? 'rediss' : 'redis'}://${hostPort(engineHost(ctx), ctx.port)}`,
          ...(tls ? { REDIS_EXPORTER_TLS_CA_CERT_FILE: ca } : {}),
          REDIS_EXPORTER_WEB_LISTEN_ADDRESS: hostPort(listen.host, listen.port),
          ...(admin ? { REDIS_USER: admin.username, REDIS_PASSWORD: admin.password } : {}),
        },
      };
    },
  },
  'postgres-exporter': {
    kind: 'postgres-exporter',
    binary: 'prometheus-postgres-exporter',
    metricsPath: '/metrics',
    launch(ctx, listen) {
      const password = ctx.spec.credentials?.admin.password;
      // The superuser the cell manages the cluster as (engine-postgres.ts); its password is
      // URL-encoded into the data source, which only the environment carries.
      const auth = password ? `postgres:${encodeURIComponent(password)}` : 'postgres';
      return {
        args: [],
        env: {
          DATA_SOURCE_NAME: `postgresql://${auth}@${hostPort(engineHost(ctx), ctx.port)}/postgres?sslmode=disable`,
          PG_EXPORTER_WEB_LISTEN_ADDRESS: hostPort(listen.host, listen.port),
        },
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
