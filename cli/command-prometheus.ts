/**
 * `sf prometheus-config`: a Prometheus scrape configuration for the whole platform — control
 * (its `/metrics` needs a token, read from a file Prometheus is given), the routers' admin
 * endpoints, every cell that serves metrics (their addresses from `GET /v3/cells`) and every
 * running sidecar that exports an engine's metrics (instance host + sidecar port, from the
 * services). Sidecar ports change when an instance is placed again: the configuration is a
 * snapshot, printed again after placements change.
 */
import { access } from 'node:fs/promises';
import type { Command } from 'commander';
import { adminTokenFile } from '../control/admin-token';
import type { ServiceView } from '../control/services';
import { ApiClient } from './api-client';
import { allServices } from './command-services';
import { UsageError, exitWithError, parseHostPort } from './cli-support';
import { CA_FILE_ENV, readLocalControl, resolveControl } from './local-control';

interface PrometheusFlags {
  router: string[];
  tokenFile?: string;
  platformTokenFile?: string;
  clientCert?: string;
  clientKey?: string;
  caFile?: string;
  scrapeInterval: string;
}

/** @default the router admin address of `sf up` (DESIGN.md default addresses) */
export const DEFAULT_ROUTER_ADMIN = '127.0.0.1:7601';

export interface ScrapeTargets {
  control: string;
  /** Control over HTTPS (sf up's default): scraped with `scheme: https`, verified with this CA file. */
  controlTls?: { caFile: string };
  tokenFile: string;
  /** The token routers' admin endpoints and cells' metrics take (their SF_API_TOKEN; under sf up, control's admin token). */
  platformTokenFile: string;
  routers: string[];
  cells: Array<{ name: string; target: string }>;
  /** Exporter sidecars; absent or empty = no `sf-sidecar` job. */
  sidecars?: SidecarTarget[];
  /**
   * What Prometheus verifies sidecars serving HTTPS with (the platform CA) and the client
   * certificate it presents to them; required when any target has `tls`.
   */
  sidecarTls?: { caFile: string; certFile: string; keyFile: string };
  scrapeInterval: string;
}

export interface SidecarTarget {
  target: string;
  service: string;
  instance: string;
  engine: string;
  sidecar: string;
  /** HTTPS with a client certificate (a cell with the platform CA's certificate). */
  tls: boolean;
}

/** `host:port` with an IPv6 host in brackets. */
function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** The scrape target of every running sidecar of every service, in a stable order. */
export function sidecarTargets(services: readonly ServiceView[]): SidecarTarget[] {
  const out: SidecarTarget[] = [];
  for (const s of services)
    for (const i of s.instances)
      for (const sc of i.sidecars ?? [])
        if (i.host && sc.port)
          out.push({
            target: hostPort(i.host, sc.port),
            service: s.name,
            instance: i.id,
            engine: s.engine,
            sidecar: sc.name,
            tls: sc.tls === true,
          });
  return out.sort((a, b) => a.service.localeCompare(b.service) || a.instance.localeCompare(b.instance));
}

/** YAML by hand: the shape is fixed and small, and every value is quoted. */
export function prometheusConfig(t: ScrapeTargets): string {
  const q = (s: string): string => JSON.stringify(s);
  const lines = [
    '# Service Foundry scrape configuration (sf prometheus-config)',
    'global:',
    `  scrape_interval: ${t.scrapeInterval}`,
    'scrape_configs:',
    '  - job_name: sf-control',
    '    metrics_path: /metrics',
    ...(t.controlTls ? ['    scheme: https', '    tls_config:', `      ca_file: ${q(t.controlTls.caFile)}`] : []),
    '    authorization:',
    '      type: Bearer',
    `      credentials_file: ${q(t.tokenFile)}`,
    '    static_configs:',
    `      - targets: [${q(t.control)}]`,
    '  - job_name: sf-router',
    '    metrics_path: /metrics',
    '    authorization:',
    '      type: Bearer',
    `      credentials_file: ${q(t.platformTokenFile)}`,
    '    static_configs:',
    `      - targets: [${t.routers.map(q).join(', ')}]`,
  ];
  if (t.cells.length) {
    lines.push(
      '  - job_name: sf-cell',
      '    metrics_path: /metrics',
      '    authorization:',
      '      type: Bearer',
      `      credentials_file: ${q(t.platformTokenFile)}`,
      '    static_configs:',
    );
    for (const c of t.cells) lines.push(`      - targets: [${q(c.target)}]`, `        labels: {cell: ${q(c.name)}}`);
  }
  const sidecarJob = (name: string, targets: SidecarTarget[], tls: string[]): void => {
    if (!targets.length) return;
    lines.push(`  - job_name: ${name}`, '    metrics_path: /metrics', ...tls, '    static_configs:');
    for (const s of targets)
      lines.push(
        `      - targets: [${q(s.target)}]`,
        `        labels: {service: ${q(s.service)}, instance: ${q(s.instance)}, engine: ${q(s.engine)}, sidecar: ${q(s.sidecar)}}`,
      );
  };
  const sidecars = t.sidecars ?? [];
  sidecarJob(
    'sf-sidecar',
    sidecars.filter((s) => !s.tls),
    [],
  );
  const tls = t.sidecarTls;
  sidecarJob(
    'sf-sidecar-tls',
    sidecars.filter((s) => s.tls),
    tls
      ? [
          '    scheme: https',
          '    tls_config:',
          `      ca_file: ${q(tls.caFile)}`,
          `      cert_file: ${q(tls.certFile)}`,
          `      key_file: ${q(tls.keyFile)}`,
        ]
      : [],
  );
  return lines.join('\n') + '\n';
}

/**
 * The CA and client certificate for sidecars that serve HTTPS: the flags, else what `sf up`
 * recorded for this control. Files only (Prometheus reads them); each must exist.
 */
async function scrapeIdentity(
  flags: PrometheusFlags,
  controlUrl: string,
  controlCa: string | undefined,
): Promise<{ caFile: string; certFile: string; keyFile: string }> {
  const recorded = await readLocalControl(controlUrl);
  const caFile = flags.caFile ?? process.env[CA_FILE_ENV] ?? recorded?.ca_file ?? controlCa;
  const certFile = flags.clientCert ?? recorded?.scrape_cert_file;
  const keyFile = flags.clientKey ?? recorded?.scrape_key_file;
  const why = 'exporter sidecars serve HTTPS to clients with a certificate from the platform CA';
  if (!certFile || !keyFile)
    throw new UsageError(`${why}: pass --client-cert FILE and --client-key FILE (sf up issues them)`);
  if (!caFile) throw new UsageError(`${why}: pass --ca-file FILE (the platform CA certificate, sf ca --pem)`);
  for (const [file, flag] of [
    [caFile, '--ca-file'],
    [certFile, '--client-cert'],
    [keyFile, '--client-key'],
  ] as const) {
    try {
      await access(file);
    } catch {
      throw new UsageError(`no file ${file}: pass ${flag} FILE`);
    }
  }
  return { caFile, certFile, keyFile };
}

async function printConfig(flags: PrometheusFlags): Promise<void> {
  if ((flags.clientCert === undefined) !== (flags.clientKey === undefined))
    throw new UsageError('--client-cert and --client-key go together');
  if (!/^\d+(ms|s|m|h)$/.test(flags.scrapeInterval))
    throw new UsageError(
      `--scrape-interval must be a Prometheus duration like 15s or 1m, got '${flags.scrapeInterval}'`,
    );
  const { url: controlUrl, caFile } = await resolveControl(process.env);
  const control = new URL(controlUrl).host;
  const controlTls = controlUrl.startsWith('https:') && caFile ? { caFile } : undefined;
  const routers = flags.router.map((r) => {
    const { host, port } = parseHostPort(r, '--router');
    return hostPort(host, port);
  });
  // A token in the configuration would be a secret in a file nobody protects: name a file.
  const tokenFile = flags.tokenFile ?? adminTokenFile(controlUrl);
  const platformTokenFile = flags.platformTokenFile ?? adminTokenFile(controlUrl);
  for (const [file, flag, what] of [
    [tokenFile, '--token-file', 'a token with the read scope (POST /v3/tokens)'],
    [platformTokenFile, '--platform-token-file', "the routers' and cells' token (their SF_API_TOKEN)"],
  ] as const) {
    try {
      await access(file);
    } catch {
      throw new UsageError(`no token file ${file}: pass ${flag} FILE holding ${what}`);
    }
  }
  const client = await ApiClient.fromEnv();
  const { resources } = await client.request<{ resources: Array<{ name: string; metrics_url: string | null }> }>(
    'GET',
    '/v3/cells',
  );
  const cells = resources
    .filter((c): c is { name: string; metrics_url: string } => c.metrics_url !== null)
    .map((c) => ({ name: c.name, target: new URL(c.metrics_url).host }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const sidecars = sidecarTargets(await allServices(client));
  const sidecarTls = sidecars.some((s) => s.tls) ? await scrapeIdentity(flags, controlUrl, caFile) : undefined;
  process.stdout.write(
    prometheusConfig({
      control,
      ...(controlTls ? { controlTls } : {}),
      tokenFile,
      platformTokenFile,
      routers,
      cells,
      sidecars,
      ...(sidecarTls ? { sidecarTls } : {}),
      scrapeInterval: flags.scrapeInterval,
    }),
  );
}

export function registerPrometheusCommand(program: Command): void {
  program
    .command('prometheus-config')
    .description(
      'print a Prometheus scrape configuration for control, the routers, every cell and every exporter sidecar',
    )
    .option(
      '--router <host:port>',
      `a router admin address (repeatable; default ${DEFAULT_ROUTER_ADMIN})`,
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option(
      '--token-file <file>',
      "file with the token Prometheus sends to control (default: this control's admin token file; a read token is enough)",
    )
    .option(
      '--platform-token-file <file>',
      "file with the token Prometheus sends to routers' admin endpoints and cells' metrics (default: this control's admin token file, which sf up's router and cells take)",
    )
    .option(
      '--client-cert <file>',
      'certificate Prometheus presents to exporter sidecars that serve HTTPS (default: the one sf up issued, ca/issued/prometheus.crt in its data dir)',
    )
    .option('--client-key <file>', 'key of --client-cert (default: the one sf up issued)')
    .option(
      '--ca-file <file>',
      'platform CA certificate that verifies exporter sidecars (default: SF_CA_FILE, else the one sf up recorded)',
    )
    .option('--scrape-interval <duration>', 'how often Prometheus scrapes', '15s')
    .action((flags: PrometheusFlags) =>
      printConfig({ ...flags, router: flags.router.length ? flags.router : [DEFAULT_ROUTER_ADMIN] }).catch(
        exitWithError,
      ),
    );
}
