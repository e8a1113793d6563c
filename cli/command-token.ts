/**
 * `sf token issue`: mints a development JWT in UAA's shape, signed with the HS256 secret that
 * `sf control --jwt-secret-file` verifies with, so CF tooling can be tried without a UAA (as
 * `uaac token client get` would give one). The secret comes from a file, never from argv.
 */
import type { Command } from 'commander';
import { CF_ROUTING_SCOPE_NAMES } from '../control/api/cf-scopes';
import { exitWithError, parseIntFlag, UsageError } from './cli-support';

interface IssueFlags {
  scopes: string;
  ttl: string;
  issuer?: string;
  secretFile?: string;
  clientId: string;
  audience?: string;
}

/** @default 3600 s, one hour (a dev token should still run out) */
const DEFAULT_TOKEN_TTL_SECONDS = 3600;
/** @default 'sf-dev' */
const DEFAULT_DEV_ISSUER = 'sf-dev';

async function issue(flags: IssueFlags): Promise<void> {
  const scopes = flags.scopes
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (scopes.length === 0) throw new UsageError('--scopes must name at least one scope');
  const unknown = scopes.find((s) => !CF_ROUTING_SCOPE_NAMES.includes(s));
  if (unknown)
    throw new UsageError(`--scopes: unknown scope '${unknown}' (known: ${CF_ROUTING_SCOPE_NAMES.join(', ')})`);
  const ttlSeconds = parseIntFlag(flags.ttl, '--ttl', 1, 7 * 24 * 3600);
  const secretFile = flags.secretFile ?? process.env.SF_JWT_SECRET_FILE;
  if (!secretFile) throw new UsageError('--secret-file (or SF_JWT_SECRET_FILE) is required');
  const [{ readHs256Secret }, { issueDevJwt }] = await Promise.all([
    import('../control/api/jwt-authenticator'),
    import('../control/api/jwt-issue'),
  ]);
  const token = await issueDevJwt({
    secret: await readHs256Secret(secretFile),
    issuer: flags.issuer ?? process.env.SF_JWT_ISSUER ?? DEFAULT_DEV_ISSUER,
    scopes,
    ttlSeconds,
    clientId: flags.clientId,
    audience: flags.audience,
  });
  process.stdout.write(`${token}\n`);
}

export function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('development JWTs for Cloud Foundry clients');
  token
    .command('issue')
    .description('mint an HS256 JWT with CF routing scopes (like uaac token client get), printed on stdout')
    .requiredOption('--scopes <list>', `comma-separated: ${CF_ROUTING_SCOPE_NAMES.join(', ')}`)
    .option('--ttl <seconds>', 'lifetime of the token', String(DEFAULT_TOKEN_TTL_SECONDS))
    .option('--issuer <iss>', `iss claim (default: SF_JWT_ISSUER or ${DEFAULT_DEV_ISSUER})`)
    .option('--secret-file <file>', 'the HS256 secret control verifies with (default: SF_JWT_SECRET_FILE)')
    .option('--client-id <id>', 'client_id and sub claims', 'sf-dev')
    .option('--audience <aud>', 'aud claim (default: none)')
    .action((flags: IssueFlags) => issue(flags).catch(exitWithError));
}
