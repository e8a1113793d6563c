/**
 * The platform CA under `sf up`: created in DATA/ca on first start (or the operator's, from
 * `--ca-cert`/`--ca-key`), its certificate copied to DATA/ca.pem for `sf ca --pem`, and the
 * router's and control's certificates, and the client certificate Prometheus scrapes exporter
 * sidecars with, issued and renewed before expiry. A renewed certificate is
 * written in place; the router reloads it for new handshakes (router/tls-context.ts), control for
 * new connections (control/api/https-files-watch.ts).
 */
import { copyFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { PlatformCa, type IssuedCertificate } from '../common/platform-ca';
import { UsageError } from './cli-support';

/** Where `sf up` keeps a copy of the CA certificate in force (its own, or the operator's). */
export function caPemFile(dataDir: string): string {
  return join(dataDir, 'ca.pem');
}

/** @default how often `sf up` checks whether a certificate is due for renewal: 1 hour */
export const CA_RENEW_CHECK_MS = 3_600_000;

export interface UpPlatformCa {
  ca: PlatformCa;
  router: IssuedCertificate;
  /** Control's HTTPS certificate (the default; none with `--no-control-https`). */
  control?: IssuedCertificate;
  /** The client certificate Prometheus presents to exporter sidecars (`sf prometheus-config`). */
  scrape: IssuedCertificate;
  stop(): void;
}

/** The name in the certificate Prometheus scrapes exporter sidecars with (a client's: no address). */
const SCRAPE_CLIENT_NAME = 'prometheus';

/** The names a client on this machine may use for the router. */
function routerNames(): string[] {
  return [...new Set(['localhost', '127.0.0.1', '::1', hostname()])];
}

export async function preparePlatformCa(
  dataDir: string,
  operator: { caCert?: string; caKey?: string; controlHttps?: boolean },
  log: (line: string) => void,
): Promise<UpPlatformCa> {
  if ((operator.caCert === undefined) !== (operator.caKey === undefined))
    throw new UsageError('--ca-cert and --ca-key go together');
  const ca = await PlatformCa.open(
    join(dataDir, 'ca'),
    {},
    operator.caCert && operator.caKey ? { certFile: operator.caCert, keyFile: operator.caKey } : undefined,
  );
  await copyFile(ca.certFile, caPemFile(dataDir));
  const names = routerNames();
  const router = await ca.ensure('router', names);
  const control = operator.controlHttps ? await ca.ensure('control', names) : undefined;
  const scrape = await ca.ensure('prometheus', [SCRAPE_CLIENT_NAME]);
  const renew = (name: 'router' | 'control' | 'prometheus'): void => {
    ca.ensure(name, name === 'prometheus' ? [SCRAPE_CLIENT_NAME] : names).then(
      (cert) => {
        if (cert.renewed) log(`sf up: ${name} certificate renewed, valid until ${cert.notAfter.toISOString()}`);
      },
      (err: Error) => log(`sf up: ${name} certificate renewal failed: ${err.message}`),
    );
  };
  const timer = setInterval(() => {
    renew('router');
    renew('prometheus');
    if (control) renew('control');
  }, CA_RENEW_CHECK_MS);
  timer.unref();
  return { ca, router, scrape, ...(control ? { control } : {}), stop: () => clearInterval(timer) };
}
