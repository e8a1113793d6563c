/**
 * `sf control`: runs the control plane's HTTP API over state in Redis. The server module (uWS,
 * pino, ioredis) is loaded only when control actually runs, so the client commands registered
 * next to this one start fast.
 */
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { controlUrlForListen, ensureAdminToken } from '../control/admin-token';
import { DEFAULT_CONTROL_API_OPTIONS as API_DEFAULTS } from '../control/api/api-options';
import type { StaticToken } from '../control/api/token-authenticator';
import type { JwtVerifierOptions } from '../control/api/jwt-authenticator';
import { DEFAULT_CONTROL_SERVER_OPTIONS as DEFAULTS } from '../control/control-options';
import { exitWithError, parseHostPort, parseIntFlag, UsageError } from './cli-support';
import { withRedisCredentialsOption } from './redis-credentials-option';

interface ControlFlags {
  listen: string;
  redis?: string;
  keyPrefix?: string;
  tokensFile?: string;
  bodyLimit: string;
  sweepIntervalMs: string;
  maxUrlBytes: string;
  maxHeaderBytes: string;
  eventBacklogBytes: string;
  maxTtl: string;
  routingCompat: string;
  jwtPublicKey?: string;
  jwtJwks?: string;
  jwtSecretFile?: string;
  jwtIssuer?: string;
  jwtAudience?: string;
  dataDir?: string;
  routerAdmin: string[];
  caDir?: string;
  caCert?: string;
  caKey?: string;
  tlsCert?: string;
  tlsKey?: string;
  serviceTls?: 'required' | 'optional' | 'off';
}

async function runControl(flags: ControlFlags): Promise<void> {
  const [{ createLogger }, { loadTokensFile }, { startControlServer }] = await Promise.all([
    import('../common/logger'),
    import('../control/api/token-authenticator'),
    import('../control/control-server'),
  ]);
  const log = createLogger('control');
  const operator = operatorCa(flags);
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined))
    throw new UsageError('--tls-cert and --tls-key go together');
  const listen = parseHostPort(flags.listen, '--listen');
  const staticTokens: StaticToken[] = flags.tokensFile ? await loadTokensFile(flags.tokensFile) : [];
  const admin = await ensureAdminToken(process.env, controlUrlForListen(listen.host, listen.port));
  if (admin.file) log.info({ file: admin.file }, 'admin token file (clients on this machine read it)');
  const control = await startControlServer({
    redisUrl: flags.redis ?? process.env.SF_REDIS_URL ?? DEFAULTS.redisUrl,
    keyPrefix: flags.keyPrefix ?? process.env.SF_KEY_PREFIX ?? DEFAULTS.keyPrefix,
    host: listen.host,
    port: listen.port,
    adminToken: admin.token,
    staticTokens,
    jwt: jwtOptions(flags),
    bodyLimitBytes: parseIntFlag(flags.bodyLimit, '--body-limit', 1024),
    sweepIntervalMs: parseIntFlag(flags.sweepIntervalMs, '--sweep-interval-ms', 10),
    api: {
      maxUrlBytes: parseIntFlag(flags.maxUrlBytes, '--max-url-bytes', 256, 100_000),
      maxHeaderBytes: parseIntFlag(flags.maxHeaderBytes, '--max-header-bytes', 1024, 100_000),
      eventBacklogLimitBytes: parseIntFlag(flags.eventBacklogBytes, '--event-backlog-bytes', 4096),
      maxRouteTtlSeconds: parseIntFlag(flags.maxTtl, '--max-ttl', 1, 86_400),
      routingCompat: parseRoutingCompat(flags.routingCompat),
    },
    // The leader's last known copy of its state, restored if the store comes back empty.
    services: {
      ...(flags.dataDir ? { stateFile: `${flags.dataDir.replace(/\/+$/, '')}/control-state.json` } : {}),
      // Services with TLS get certificates from the platform CA (docs/tls.md).
      ...(flags.caDir ? { platformCa: { dir: flags.caDir, operator } } : {}),
      ...(flags.serviceTls ? { defaultServiceTls: flags.serviceTls } : {}),
    },
    logger: log,
    routerAdminUrls: flags.routerAdmin,
    ...(flags.tlsCert && flags.tlsKey
      ? {
          tls: {
            certFile: flags.tlsCert,
            keyFile: flags.tlsKey,
            // A standby forwards to the leader's https address, verified against the platform CA.
            caFile: flags.caCert ?? (flags.caDir ? join(flags.caDir, 'ca.crt') : process.env.SF_CA_FILE),
          },
        }
      : {}),
  });
  const shutdown = (signal: string): void => {
    log.info({ signal }, 'control stopping');
    void control.close().then(() => process.exit(0));
  };
  // Like nginx and HAProxy: SIGHUP serves a renewed HTTPS certificate now, not at the next check.
  process.on('SIGHUP', () => void control.checkTls());
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));
}

/** The operator's CA (`--ca-cert`, `--ca-key`), used instead of one made in `--ca-dir`. */
function operatorCa(flags: ControlFlags): { certFile: string; keyFile: string } | undefined {
  if ((flags.caCert === undefined) !== (flags.caKey === undefined))
    throw new UsageError('--ca-cert and --ca-key go together');
  if (flags.caCert && !flags.caDir) throw new UsageError('--ca-cert needs --ca-dir (where certificates are issued)');
  return flags.caCert && flags.caKey ? { certFile: flags.caCert, keyFile: flags.caKey } : undefined;
}

/** JWT verification from the flags (the secret file also from SF_JWT_SECRET_FILE), or none. */
function jwtOptions(flags: ControlFlags): JwtVerifierOptions | undefined {
  const secretFile = flags.jwtSecretFile ?? process.env.SF_JWT_SECRET_FILE;
  const keys = [flags.jwtPublicKey, flags.jwtJwks, secretFile].filter((k) => k !== undefined);
  if (keys.length === 0) return undefined;
  if (keys.length > 1) throw new UsageError('give one of --jwt-public-key, --jwt-jwks and --jwt-secret-file');
  const issuer = flags.jwtIssuer ?? process.env.SF_JWT_ISSUER;
  if (!issuer) throw new UsageError('--jwt-issuer (or SF_JWT_ISSUER) is required with a JWT key');
  return {
    publicKeyFile: flags.jwtPublicKey,
    jwksFile: flags.jwtJwks,
    hs256SecretFile: secretFile,
    issuer,
    audience: flags.jwtAudience,
  };
}

function parseRoutingCompat(value: string): 'strict' | 'cf' {
  if (value === 'strict' || value === 'cf') return value;
  throw new UsageError(`--routing-compat must be 'strict' or 'cf', got '${value}'`);
}

export function registerControlCommand(program: Command): void {
  withRedisCredentialsOption(program.command('control'))
    .description('run the control plane API (state in Redis)')
    .option('--listen <host:port>', 'API address', `${DEFAULTS.host}:${DEFAULTS.port}`)
    .option('--redis <url>', `Redis URL (default: SF_REDIS_URL or ${DEFAULTS.redisUrl})`)
    .option(
      '--key-prefix <prefix>',
      'prefix of every Redis key; control, cells and routers of one installation use the same (default: SF_KEY_PREFIX or sf:)',
    )
    .option(
      '--router-admin <url>',
      "a router's admin URL, whose per-route counters the console charts (repeatable)",
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--tokens-file <file>', 'JSON list of extra tokens: [{"name","token","scopes":["read"|"write"|"admin"]}]')
    .option('--body-limit <bytes>', 'largest accepted request body', String(DEFAULTS.bodyLimitBytes))
    .option(
      '--data-dir <dir>',
      "where the leader keeps a copy of control's state, restored when the store comes back empty (default: none)",
    )
    .option('--sweep-interval-ms <ms>', 'how often expired routes are removed', String(DEFAULTS.sweepIntervalMs))
    .option('--max-url-bytes <bytes>', 'longest request URL (414 beyond)', String(API_DEFAULTS.maxUrlBytes))
    .option(
      '--max-header-bytes <bytes>',
      'largest request header block (431 beyond)',
      String(API_DEFAULTS.maxHeaderBytes),
    )
    .option(
      '--event-backlog-bytes <bytes>',
      'how far an event-stream client may fall behind before it is disconnected (told to resync)',
      String(API_DEFAULTS.eventBacklogLimitBytes),
    )
    .option(
      '--max-ttl <seconds>',
      'largest tcp route ttl, and the ttl of a registration without one (Cloud Foundry max_ttl)',
      String(API_DEFAULTS.maxRouteTtlSeconds),
    )
    .option(
      '--routing-compat <mode>',
      "strict: refuse unknown fields, stranded ports and deleting groups with routes; cf: as Cloud Foundry's routing-api",
      API_DEFAULTS.routingCompat,
    )
    .option(
      '--ca-dir <dir>',
      'the platform CA (ca.crt, ca.key; created if missing): services with TLS get certificates from it (default: none, plain routes only)',
    )
    .option('--tls-cert <file>', 'serve the API over HTTPS with this certificate (PEM; default: plain HTTP)')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM)')
    .option('--ca-cert <file>', "the operator's CA certificate (PEM) instead of one made in --ca-dir")
    .option('--ca-key <file>', "the operator's CA private key (PEM, mode 0600), with --ca-cert")
    .addOption(
      new Option(
        '--service-tls <policy>',
        'TLS of a service created without --tls (default: required with --ca-dir, else off)',
      ).choices(['required', 'optional', 'off']),
    )
    .option('--jwt-public-key <file>', 'verify UAA-style JWTs with this RS256 public key (PEM, UAA token_key)')
    .option('--jwt-jwks <file>', 'verify UAA-style JWTs with the keys of this JWKS file (UAA token_keys)')
    .option(
      '--jwt-secret-file <file>',
      'verify HS256 JWTs with the secret in this file, for development (default: SF_JWT_SECRET_FILE)',
    )
    .option('--jwt-issuer <iss>', 'the iss every JWT must carry (default: SF_JWT_ISSUER)')
    .option('--jwt-audience <aud>', 'an aud every JWT must include (default: not checked)')
    .action((flags: ControlFlags) => runControl(flags).catch(exitWithError));
}
