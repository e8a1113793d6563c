/**
 * `sf ca`: the platform CA that `sf up` uses. `--pem` prints its certificate, the one file a
 * client needs to verify the router (`redis-cli --tls --cacert`, `psql sslrootcert=`).
 * `sf rotate-certificate NAME`: a new key and certificate for a service, at once (docs/tls.md).
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { RotatedCertificateView } from '../control/api/routes-certificates';
import { SERVICE_NAME_PATTERN, SERVICE_NAME_RULE } from '../control/services/service-schema';
import { ApiClient } from './api-client';
import { UsageError, exitWithError } from './cli-support';
import { printResult } from './output-table';
import { defaultUpDataDir } from './command-up';
import { caPemFile } from './up-platform-ca';

async function printCa(flags: { pem?: boolean; path?: boolean; dataDir?: string }): Promise<void> {
  const file = caPemFile(resolve(flags.dataDir ?? defaultUpDataDir()));
  if (flags.path) {
    process.stdout.write(`${file}\n`);
    return;
  }
  if (!flags.pem) throw new UsageError('sf ca needs --pem (print the CA certificate) or --path (print its file)');
  const pem = await readFile(file, 'utf8').catch(() => {
    throw new Error(`no platform CA at ${file}: start the platform with 'sf up' (or pass --data-dir)`);
  });
  process.stdout.write(pem);
}

async function rotateCertificate(name: string, flags: { json?: boolean }): Promise<void> {
  if (!SERVICE_NAME_PATTERN.test(name)) throw new UsageError(`service name '${name}' ${SERVICE_NAME_RULE}`);
  const client = await ApiClient.fromEnv();
  const view = await client.request<RotatedCertificateView>(
    'POST',
    `/v3/service_instances/${encodeURIComponent(name)}/actions/rotate-certificate`,
    {},
  );
  printResult(
    flags.json,
    view,
    () =>
      `service ${name}: new certificate ${view.fingerprint_sha256} (serial ${view.serial}, valid until ${view.not_after}); ` +
      `the router loads it on its next handshake, ${view.engines} engine(s) on their cell's next probe\n`,
  );
}

export function registerCaCommand(program: Command): void {
  program
    .command('rotate-certificate')
    .description(
      'issue a new key and certificate for a service from the platform CA now (a key that may have leaked); router and engines load it without dropping connections',
    )
    .argument('<name>', 'service name')
    .option('--json', 'machine-readable output')
    .action((name: string, flags: { json?: boolean }) => rotateCertificate(name, flags).catch(exitWithError));

  program
    .command('ca')
    .description("the platform CA of 'sf up': print its certificate for clients to verify the platform with")
    .option('--pem', 'print the CA certificate (PEM)')
    .option('--path', 'print the path of the CA certificate file')
    .option('--data-dir <dir>', "the data directory of 'sf up' (default: as sf up)")
    .action((flags: { pem?: boolean; path?: boolean; dataDir?: string }) => printCa(flags).catch(exitWithError));
}
