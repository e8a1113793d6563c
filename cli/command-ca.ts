/**
 * `sf ca`: the platform CA that `sf up` uses. `--pem` prints its certificate, the one file a
 * client needs to verify the router (`redis-cli --tls --cacert`, `psql sslrootcert=`).
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { UsageError, exitWithError } from './cli-support';
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

export function registerCaCommand(program: Command): void {
  program
    .command('ca')
    .description("the platform CA of 'sf up': print its certificate for clients to verify the platform with")
    .option('--pem', 'print the CA certificate (PEM)')
    .option('--path', 'print the path of the CA certificate file')
    .option('--data-dir <dir>', "the data directory of 'sf up' (default: as sf up)")
    .action((flags: { pem?: boolean; path?: boolean; dataDir?: string }) => printCa(flags).catch(exitWithError));
}
