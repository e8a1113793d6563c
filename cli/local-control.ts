/**
 * How the CLI on this machine reaches the control `sf up` runs here without any setting
 * (docs/tls.md, Control over HTTPS): `sf up` writes `${SF_HOME:-~/.sf}/controls/<host>-<port>.json`
 * with the URL it serves (https by default) and the platform CA file that verifies it, and
 * removes it when it stops. The CLI reads the record of its control's address: of the default
 * address when `SF_CONTROL_URL` is not set (so `sf cells` finds an https control on 7600), and of
 * `SF_CONTROL_URL`'s address for the CA when that URL is https.
 */
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_CONTROL_URL, controlAddressKey, sfHome } from '../control/admin-token';

/** Names the CA file the CLI verifies an https control with, before any record (docs/tls.md). */
export const CA_FILE_ENV = 'SF_CA_FILE';

export interface LocalControl {
  /** The URL local clients use: `https://127.0.0.1:7600` under `sf up` by default. */
  url: string;
  /** The platform CA certificate (DATA/ca.pem): verifies an https control and exporter sidecars. */
  ca_file?: string;
  /**
   * The client certificate and key Prometheus presents to exporter sidecars, which serve HTTPS
   * to holders of a certificate from the platform CA only (`sf prometheus-config`).
   */
  scrape_cert_file?: string;
  scrape_key_file?: string;
}

const DIR = 'controls';

/** The record file of the control at `controlUrl` (keyed by address, as admin tokens are). */
export function localControlFile(controlUrl: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(sfHome(env), DIR, `${controlAddressKey(controlUrl)}.json`);
}

/** Written by `sf up` once its control answers; `listenUrl` names the address (any scheme). */
export async function writeLocalControl(
  env: NodeJS.ProcessEnv,
  listenUrl: string,
  record: LocalControl,
): Promise<string> {
  const file = localControlFile(listenUrl, env);
  await mkdir(join(sfHome(env), DIR), { recursive: true, mode: 0o700 });
  await writeFile(file, `${JSON.stringify(record)}\n`, { mode: 0o644 });
  await chmod(file, 0o644);
  return file;
}

export async function removeLocalControl(env: NodeJS.ProcessEnv, listenUrl: string): Promise<void> {
  await rm(localControlFile(listenUrl, env), { force: true });
}

export async function readLocalControl(
  controlUrl: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<LocalControl | undefined> {
  try {
    const parsed = JSON.parse(await readFile(localControlFile(controlUrl, env), 'utf8')) as Partial<LocalControl>;
    if (typeof parsed.url !== 'string') return undefined;
    const files = (['ca_file', 'scrape_cert_file', 'scrape_key_file'] as const).filter(
      (k) => typeof parsed[k] === 'string',
    );
    return { url: parsed.url, ...Object.fromEntries(files.map((k) => [k, parsed[k]])) };
  } catch {
    return undefined;
  }
}

/**
 * The control the CLI talks to and the CA that verifies it: `SF_CONTROL_URL`, else the URL `sf up`
 * recorded for the default address, else the default (`http://127.0.0.1:7600`); for an https URL
 * the CA is `SF_CA_FILE`, else the recorded CA of that address, else the platform CA of `sf up`'s
 * default data dir, else none (the system's CAs).
 */
export async function resolveControl(
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ url: string; caFile: string | undefined }> {
  const url = env.SF_CONTROL_URL || (await readLocalControl(DEFAULT_CONTROL_URL, env))?.url || DEFAULT_CONTROL_URL;
  if (env[CA_FILE_ENV]) return { url, caFile: env[CA_FILE_ENV] };
  if (!url.startsWith('https:')) return { url, caFile: undefined };
  const recorded = (await readLocalControl(url, env))?.ca_file;
  const upDir = process.getuid?.() === 0 ? '/var/lib/service-foundry/up' : join(sfHome(env), 'up');
  return { url, caFile: recorded ?? join(upDir, 'ca.pem') };
}
