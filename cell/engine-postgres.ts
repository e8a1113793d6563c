/**
 * Engine `postgres`: initdb for a primary, pg_basebackup from the primary for a replica, a
 * generated postgresql.conf and pg_hba.conf, `postgres -D` in the foreground (so the executor owns
 * the pid and sees its exit; `pg_ctl start` would daemonize it away), `pg_promote()` to promote.
 *
 * Authentication: the platform user `postgres` is trusted on loopback (and on `trustCidrs`) for
 * both SQL and replication. This is a stand-in until the platform hands out credentials
 * (docs/cells.md, "Security").
 */
import { lookup } from 'node:dns/promises';
import { chmod, chown, readFile, readdir, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import {
  defaultDiskSync,
  type DiskSync,
  type HostPort,
  type InstanceCredentials,
  type InstanceSpec,
} from '../protocol';
import {
  RESTORED_MARKER,
  type Availability,
  type Engine,
  type EngineContext,
  type LaunchCommand,
  type ReplicationPosition,
  type ToolOptions,
} from './engine';
import { ErrorCode, SfError } from '../common';
import { findBinary, lookupUser, runCommand, type RunAs } from './run-command';
import { pathExists as exists } from './path-exists';
import { copyEngineTlsFiles, engineTlsPaths, tlsFilesChanged, type EngineTlsFiles } from './engine-tls';
import { pgQuery, type PgTarget } from './pg-client';
import { removeStaleLockFile } from './stale-lock-file';

export type { EngineTlsFiles } from './engine-tls';
import {
  PG_CLIENTS_ROLE,
  pgBootstrapSql,
  pgLiteral,
  pgMonitorRoleSql,
  pgRestoredRolesSql,
  pgSyncUsersSql,
} from './engine-credentials';

export interface PostgresEngineOptions {
  /** System user the server runs as when the cell runs as root (postgres refuses root). @default 'postgres' */
  systemUser?: string;
  /** Database superuser the platform connects as. @default 'postgres' */
  superuser?: string;
  /** Extra directories searched for the binaries. @default ['/usr/lib/postgresql/15/bin', ...] */
  binDirs?: string[];
  /** Networks trusted besides loopback, e.g. the cells' subnet. @default [] */
  trustCidrs?: string[];
  /** @default 5000 */
  queryTimeoutMs?: number;
  /**
   * The cell's certificate from the platform CA (docs/tls.md): with it the server speaks TLS
   * (`ssl = on`), replicas connect to their primary with `sslmode=verify-full`, and replication
   * connections without TLS are refused. @default none (plaintext)
   */
  tls?: EngineTlsFiles;
}

/** Where an instance keeps its copies of the TLS files (engine-tls.ts). */
export const pgTlsPaths = engineTlsPaths;

/**
 * libpq settings that verify the peer against the platform CA and present the instance's own
 * certificate (engines with a certificate require one of every TLS client; the platform CA
 * issues every certificate for clientAuth too), empty without TLS. For the engine's own
 * processes (walreceiver, pg_basebackup, pg_rewind), which run as its user and read its copies.
 */
function pgSslConninfo(ctx: EngineContext, tls: boolean, peer?: PgPeerName): string {
  if (!tls) return '';
  const files = pgTlsPaths(ctx.volumeDir);
  return ` sslmode=verify-full sslrootcert=${files.ca} sslcert=${files.cert} sslkey=${files.key}${peer ? ` hostaddr=${peer.hostaddr}` : ''}`;
}

/**
 * How an instance presenting its service's certificate is verified by its peers: that
 * certificate names the service, not the cell, so libpq connects to the address (`hostaddr`) and
 * checks the certificate against the service's name (`host`).
 */
export interface PgPeerName {
  serverName: string;
  /** A numeric address: the peer's host, resolved. */
  hostaddr: string;
}

const DEFAULT_BIN_DIRS = ['/usr/lib/postgresql/17/bin', '/usr/lib/postgresql/16/bin', '/usr/lib/postgresql/15/bin'];
const BINARIES = ['postgres', 'initdb', 'pg_ctl', 'pg_basebackup', 'pg_rewind', 'psql'] as const;
type Binary = (typeof BINARIES)[number];
/** application_name of the commit check's connection, so a check that ran out can be cancelled. */
const COMMIT_CHECK_APP = 'sf-commit-check';

function quote(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * WAL segment size of clusters this engine creates (initdb --wal-segsize), in MB.
 * pg_rewind (PostgreSQL 15) copies the source's whole pg_wal, and with sync durability every
 * commit waits until the deposed primary is rewound and streaming again. With 16 MB segments,
 * `min_wal_size` (at least two segments, recycled ones included) and 128 MB of `wal_keep_size`
 * it copied 50-130 MB and took 4-5 s on a loaded machine; 1 MB segments let pg_wal stay small.
 */
export const PG_WAL_SEGMENT_MB = 1;

/** How much WAL a cluster keeps; `segmentMb` is fixed at initdb (16 for clusters made before). */
export interface PgWalSettings {
  /** @default 16 */
  segmentMb?: number;
  /**
   * `wal_keep_size`: what lets a standby catch up after a short gap without a slot.
   * @default '16MB' with sync durability (commits wait while no standby streams, so little WAL
   * piles up, and a rewind copies all of it), '128MB' with async
   */
  keepSize?: string;
}

/**
 * While pg_rewind finishes the crash recovery of a deposed primary, its own WAL back to the last
 * common checkpoint must survive the checkpoint that ends that recovery.
 */
export const PG_REWIND_WAL_KEEP_SIZE = '1GB';

/** The segment size of a cluster, from a WAL file in pg_wal; undefined when none is there yet. */
export async function walSegmentMb(dataDir: string): Promise<number | undefined> {
  try {
    const dir = path.join(dataDir, 'pg_wal');
    const segment = (await readdir(dir)).find((f) => /^[0-9A-F]{24}$/.test(f));
    return segment ? (await stat(path.join(dir, segment))).size / (1024 * 1024) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `synchronous_commit` and `fsync` for a spec's durability and disk sync (docs/volumes.md).
 * PostgreSQL has one setting for both waits: a commit that waits for a sync standby has flushed
 * its own WAL first, so with sync durability `interval` and `off` relax the standby's side
 * (`remote_write`: in its OS, not yet on its disk). Without a standby to wait for, `interval` is
 * `synchronous_commit off` (the WAL writer flushes every 200 ms; a crash loses at most ~600 ms
 * of commits and never corrupts), and `off` also turns `fsync` off (a host crash may corrupt the
 * cluster: for data that can be rebuilt).
 */
export function pgSyncSettings(spec: Pick<InstanceSpec, 'durability' | 'replicas' | 'diskSync'>): {
  synchronousCommit: string;
  fsync: boolean;
} {
  const mode: DiskSync = spec.diskSync ?? defaultDiskSync(spec.durability, 'postgres');
  const waitsForStandby = spec.durability === 'sync' && spec.replicas > 0;
  const local = spec.durability === 'sync' ? 'on' : 'local';
  const commit: Record<DiskSync, string> = waitsForStandby
    ? { always: 'on', interval: 'remote_write', off: 'remote_write' }
    : { always: local, interval: 'off', off: 'off' };
  return { synchronousCommit: commit[mode], fsync: mode !== 'off' };
}

export function renderPostgresConfig(
  ctx: EngineContext,
  superuser: string,
  primary?: HostPort,
  wal: PgWalSettings = {},
  tls = false,
  /** With TLS: the upstream presents the service's certificate, verified by this name. */
  peer?: PgPeerName,
): string {
  const { spec } = ctx;
  const sync = spec.durability === 'sync';
  const upstream = primary ?? (spec.role === 'replica' ? spec.replicaOf : undefined);
  const lines = [
    '# Generated by the Service Foundry cell on every start; edits are overwritten.',
    `port = ${ctx.port}`,
    `listen_addresses = ${quote(ctx.listenHost)}`,
    // No Unix socket: its path length limit bites deep data dirs, and everything speaks TCP.
    "unix_socket_directories = ''",
    'wal_level = replica',
    'max_wal_senders = 10',
    'max_replication_slots = 10',
    'hot_standby = on',
    // Lets pg_rewind turn a deposed primary into a replica later (its WAL is kept through the
    // rewind by PG_REWIND_WAL_KEEP_SIZE, see rewind()).
    'wal_log_hints = on',
    `wal_keep_size = ${wal.keepSize ?? (sync ? '16MB' : '128MB')}`,
    // The least PostgreSQL allows: recycled segments are copied by pg_rewind too.
    `min_wal_size = ${2 * (wal.segmentMb ?? 16)}MB`,
    // A rewound standby replays from the last checkpoint before the fork: frequent checkpoints
    // keep that replay, and so the time until commits have their sync standby again, short.
    'checkpoint_timeout = 1min',
    // A standby whose primary went away retries its stream only this often, and a promotion
    // asked meanwhile waited out the default 5 s: measured as 5.2 s promotions after a fence.
    `wal_retrieve_retry_interval = ${PG_WAL_RETRY_MS}ms`,
    `fsync = ${pgSyncSettings(spec).fsync ? 'on' : 'off'}`,
    `synchronous_commit = ${pgSyncSettings(spec).synchronousCommit}`,
    // A full volume (docs/volumes.md): transactions start read-only, so writes fail with
    // "cannot execute ... in a read-only transaction"; a session may still SET it off to clean up.
    `default_transaction_read_only = ${ctx.volumeFull ? 'on' : 'off'}`,
    // Waiting for a standby that does not exist would block every commit forever.
    `synchronous_standby_names = ${quote(sync && spec.replicas > 0 ? '*' : '')}`,
    'shared_buffers = 32MB',
    'max_connections = 50',
    'logging_collector = off',
  ];
  if (tls) {
    const files = pgTlsPaths(ctx.volumeDir);
    // ssl_ca_file: clients are asked for a certificate, which pg_hba.conf requires (clientcert).
    lines.push(
      'ssl = on',
      `ssl_cert_file = ${quote(files.cert)}`,
      `ssl_key_file = ${quote(files.key)}`,
      `ssl_ca_file = ${quote(files.ca)}`,
    );
  }
  if (upstream) {
    // Replicas connect as the replication user; the file is 0600 in a 0700 directory.
    const creds = spec.credentials?.replication;
    const user = creds ? `user=${creds.username} password=${creds.password}` : `user=${superuser}`;
    // With TLS the replica verifies its primary's certificate against the platform CA.
    const host = tls && peer ? peer.serverName : upstream.host;
    const conninfo = `host=${host} port=${upstream.port} ${user} application_name=${spec.instanceId}${pgSslConninfo(ctx, tls, peer)}`;
    lines.push(`primary_conninfo = ${quote(conninfo)}`);
  }
  return lines.join('\n') + '\n';
}

/** @default ms between a standby's attempts to stream from its primary (PostgreSQL's default: 5000) */
export const PG_WAL_RETRY_MS = 500;

/** The networks of this host's own clients: the cell's probes and a router on the same host. */
const LOOPBACK_NETS = ['127.0.0.1/32', '::1/128'];

/**
 * How the engine serves TLS, for pg_hba.conf: `off` (no certificate), `cell` (the cell's
 * certificate: a service without TLS, whose route reaches its engines in plaintext), `service`
 * (its service's certificate: the route re-encrypts to it) or `service-optional` (the same under
 * an `optional` policy, whose plaintext clients reach the engine in plaintext from the router).
 */
export type PgHbaTls = 'off' | 'cell' | 'service' | 'service-optional';

export function renderPgHba(
  trustCidrs: string[],
  credentials?: InstanceCredentials,
  tls: PgHbaTls | boolean = 'off',
): string {
  const mode: PgHbaTls = tls === true ? 'service' : tls === false ? 'off' : tls;
  const nets = [...LOOPBACK_NETS, ...trustCidrs];
  if (credentials && mode !== 'off') {
    // A password for everyone, the platform included, and over TLS a client certificate the
    // platform CA signed as well (`clientcert=verify-ca` against ssl_ca_file): the router, the
    // cell and replicas present theirs. Replication for its user only, over TLS only. Plaintext
    // SQL only from this host's loopback (the cell's own probes) and, for a service without TLS
    // or with an `optional` policy, from the trusted networks too: its route reaches engines in
    // plaintext (for an `optional` route, the plaintext leg of a plaintext client, docs/tls.md).
    const out = [
      '# Generated by the Service Foundry cell: SCRAM, and a platform client certificate over TLS (docs/cells.md).',
    ];
    for (const net of nets) {
      out.push(`hostssl all all ${net} scram-sha-256 clientcert=verify-ca`);
      if (LOOPBACK_NETS.includes(net) || mode === 'cell' || mode === 'service-optional')
        out.push(`hostnossl all all ${net} scram-sha-256`);
      out.push(`hostssl replication ${credentials.replication.username} ${net} scram-sha-256 clientcert=verify-ca`);
    }
    return out.join('\n') + '\n';
  }
  if (credentials) {
    // A password for everyone, the platform included; replication for its user only.
    const out = ['# Generated by the Service Foundry cell: SCRAM for every connection (docs/cells.md).'];
    for (const net of nets)
      out.push(
        `host all all ${net} scram-sha-256`,
        `host replication ${credentials.replication.username} ${net} scram-sha-256`,
      );
    return out.join('\n') + '\n';
  }
  const lines = ['# Generated by the Service Foundry cell: trust on loopback for the platform (docs/cells.md).'];
  for (const net of nets) lines.push(`host all all ${net} trust`, `host replication all ${net} trust`);
  return lines.join('\n') + '\n';
}

/** libpq's password variable, for the one helper process that needs it; empty without one. */
function passwordEnv(password: string | undefined): Record<string, string> {
  return password ? { PGPASSWORD: password } : {};
}

/** Bound of the CHECKPOINT on a new primary before a rewind. */
const PG_CHECKPOINT_TIMEOUT_MS = 120_000;

/** `16/B374D848` -> decimal string, comparable with BigInt. */
export function lsnToValue(lsn: string): string {
  const m = /^([0-9A-Fa-f]+)\/([0-9A-Fa-f]+)$/.exec(lsn);
  if (!m) return '0';
  return ((BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`)).toString();
}

/**
 * Where a cleanly stopped cluster's data ends, from `global/pg_control` (what `pg_controldata`
 * prints as "Latest checkpoint location"): a clean shutdown ends with a checkpoint record, written
 * after every commit, so every acknowledged write precedes it. Null unless the state says shut
 * down. The layout is PostgreSQL's `ControlFileData` in the host's byte order (the file never
 * travels between machines): `state` at 16, `checkPoint` at 32.
 */
export async function cleanStopLsn(dataDir: string): Promise<string | null> {
  const control = await readFile(path.join(dataDir, 'global', 'pg_control')).catch(() => null);
  if (!control || control.length < 40) return null;
  const DB_SHUTDOWNED = 1;
  const state = control.readUInt32LE(16);
  if (state !== DB_SHUTDOWNED) return null;
  const lsn = control.readBigUInt64LE(32);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

export class PostgresEngine implements Engine {
  readonly kind = 'postgres' as const;
  private readonly options: Required<Omit<PostgresEngineOptions, 'tls'>>;
  private readonly bins = new Map<Binary, string | undefined>();
  private readonly tls: EngineTlsFiles | undefined;

  constructor(options: PostgresEngineOptions = {}) {
    this.options = {
      systemUser: options.systemUser ?? 'postgres',
      superuser: options.superuser ?? 'postgres',
      binDirs: options.binDirs ?? DEFAULT_BIN_DIRS,
      trustCidrs: options.trustCidrs ?? [],
      queryTimeoutMs: options.queryTimeoutMs ?? 5_000,
    };
    this.tls = options.tls;
  }

  async available(): Promise<Availability> {
    const missing: string[] = [];
    for (const b of BINARIES) if (!(await this.find(b))) missing.push(b);
    if (missing.length) return { ok: false, reason: `postgres binaries not found: ${missing.join(', ')}` };
    if (process.getuid?.() === 0 && !lookupUser(this.options.systemUser)) {
      return { ok: false, reason: `running as root and system user '${this.options.systemUser}' does not exist` };
    }
    return { ok: true, reason: '' };
  }

  runAs(): RunAs | undefined {
    if (process.getuid?.() !== 0) return undefined;
    const user = lookupUser(this.options.systemUser);
    if (!user)
      throw new SfError(ErrorCode.EngineUnavailable, `system user '${this.options.systemUser}' does not exist`);
    return user;
  }

  /**
   * Every instance on a cell with a certificate serves TLS (`ssl = on`), plaintext too for SQL;
   * the router may re-encrypt to it only when it presents its service's certificate (the
   * route's), for SCRAM channel binding, so only then does the cell report `tls`.
   */
  servesTls(spec: InstanceSpec): boolean {
    return this.tls !== undefined && spec.tlsCertificate !== undefined;
  }

  /**
   * The files an instance serves TLS with: its service's certificate when the spec names one,
   * else the cell's; the platform CA either way.
   */
  private tlsFiles(spec: InstanceSpec): EngineTlsFiles | undefined {
    if (!this.tls) return undefined;
    return spec.tlsCertificate ? { ...spec.tlsCertificate, caFile: this.tls.caFile } : this.tls;
  }

  /** How this instance verifies a peer at `host` (undefined: by `host` itself). */
  private async peerName(ctx: EngineContext, host: string): Promise<PgPeerName | undefined> {
    if (!this.tls || !ctx.spec.tlsCertificate) return undefined;
    return { serverName: ctx.spec.service, hostaddr: isIP(host) ? host : (await lookup(host)).address };
  }

  /** postgresql.conf for `ctx`, its upstream's certificate verified as `peerName` says. */
  private async config(ctx: EngineContext, wal: PgWalSettings): Promise<string> {
    const upstream = ctx.spec.role === 'replica' ? ctx.spec.replicaOf : undefined;
    const peer = upstream ? await this.peerName(ctx, upstream.host) : undefined;
    return renderPostgresConfig(ctx, this.options.superuser, undefined, wal, this.tls !== undefined, peer);
  }

  /**
   * A renewed or replaced certificate (its source files changed) is copied into the volume and
   * loaded with `pg_reload_conf()`: new connections get it, established ones keep their session.
   * Called from the cell's health probe; true when it reloaded.
   */
  async refreshTls(ctx: EngineContext): Promise<boolean> {
    const files = this.tlsFiles(ctx.spec);
    if (!files) return false;
    const changed = await tlsFilesChanged(files, ctx.volumeDir);
    if (changed) await this.copyTlsFiles(ctx, this.owner(ctx));
    // A policy change swaps the certificate, and with it who may speak plaintext (pg_hba.conf).
    const hba = await this.writeHba(ctx);
    if (!changed && !hba) return false;
    // The cell reports `tls` after this returns, and the route then re-encrypts to the engine and
    // verifies the service's certificate: the reload must have happened, not just been asked for.
    await this.reloadAndWait(ctx);
    return true;
  }

  /**
   * `pg_reload_conf()` only signals the postmaster, which reads the files (and loads the TLS
   * certificate and pg_hba.conf) when it handles the signal. Waits until a new session sees a later
   * `pg_conf_load_time()`: sessions are forked by the postmaster after it handled the reload, so
   * from then on every new connection meets the new files.
   */
  private async reloadAndWait(ctx: EngineContext): Promise<void> {
    const loadTime = async (): Promise<string> => (await this.query(ctx, 'select pg_conf_load_time()')).trim();
    const before = await loadTime();
    await this.query(ctx, 'select pg_reload_conf()');
    const deadline = Date.now() + this.options.queryTimeoutMs;
    while ((await loadTime()) === before) {
      if (Date.now() > deadline)
        throw new SfError(
          ErrorCode.EngineUnavailable,
          `PostgreSQL did not reload its configuration within ${this.options.queryTimeoutMs} ms (see its log)`,
        );
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** Writes pg_hba.conf for the spec when it differs from the file; true when it did. */
  private async writeHba(ctx: EngineContext): Promise<boolean> {
    const file = path.join(ctx.dataDir, 'pg_hba.conf');
    const mode: PgHbaTls = !this.tls
      ? 'off'
      : !this.servesTls(ctx.spec)
        ? 'cell'
        : ctx.spec.tlsOptional
          ? 'service-optional'
          : 'service';
    const want = renderPgHba(this.options.trustCidrs, ctx.spec.credentials, mode);
    if ((await readFile(file, 'utf8').catch(() => '')) === want) return false;
    await writeFile(file, want);
    const runAs = this.owner(ctx);
    if (runAs) await chown(file, runAs.uid, runAs.gid);
    return true;
  }

  async prepare(ctx: EngineContext): Promise<void> {
    const { spec, dataDir } = ctx;
    const runAs = this.owner(ctx);
    // First: a replica's base backup already verifies its primary with the CA copy.
    await this.copyTlsFiles(ctx, runAs);
    const initialised = await exists(path.join(dataDir, 'PG_VERSION'));
    // In a container the engine has its own pid namespace, where the pid in the file means nothing.
    if (initialised && !ctx.tools) await removeStaleLockFile(dataDir);
    if (!initialised) {
      // A half-made directory (crash during initdb or base backup) is useless: start over.
      for (const entry of await readdir(dataDir)) await rm(path.join(dataDir, entry), { recursive: true, force: true });
      await chmod(dataDir, 0o700);
      if (runAs) {
        await chown(dataDir, runAs.uid, runAs.gid);
        // A container sees the bind-mounted volume, not the host's directories above it.
        if (!ctx.tools) await this.checkReachable(dataDir, runAs);
      }
      if (spec.role === 'primary') {
        await this.tool(
          ctx,
          'initdb',
          // Data checksums, besides wal_log_hints in the config: pg_rewind needs one of them to
          // turn a deposed primary into a standby, and checksums also catch torn pages.
          // Small WAL segments keep pg_wal, which pg_rewind copies whole, small (PG_WAL_SEGMENT_MB).
          [
            '-D',
            dataDir,
            '-U',
            this.options.superuser,
            '-A',
            'trust',
            '-E',
            'UTF8',
            '--data-checksums',
            `--wal-segsize=${PG_WAL_SEGMENT_MB}`,
          ],
          { timeoutMs: 120_000 },
        );
        // initdb's `trust` never serves a connection: pg_hba.conf is rewritten below before the
        // server first listens, and the platform roles get their passwords now, in single-user mode.
        if (spec.credentials) await this.bootstrapRoles(ctx, spec.credentials);
      } else {
        if (!spec.replicaOf)
          throw new SfError(ErrorCode.InvalidInstanceSpec, 'a postgres replica needs replicaOf', 'replicaOf');
        const { host, port } = spec.replicaOf;
        const peer = await this.peerName(ctx, host);
        await this.tool(
          ctx,
          'pg_basebackup',
          [
            '-h',
            peer?.serverName ?? host,
            '-p',
            String(port),
            '-U',
            spec.credentials?.replication.username ?? this.options.superuser,
            '-D',
            dataDir,
            '-R',
            '-X',
            'stream',
            '-c',
            'fast',
            ...(this.tls ? ['-d', pgSslConninfo(ctx, true, peer).trim()] : []),
          ],
          { timeoutMs: 600_000, env: passwordEnv(spec.credentials?.replication.password) },
        );
      }
    }
    const restored = path.join(ctx.volumeDir, RESTORED_MARKER);
    if (initialised && (await exists(restored))) {
      // A cluster restored from another service's snapshot: its platform roles carry that
      // service's passwords until they get this one's, in single-user mode before it listens
      // (which also finishes the base backup's recovery). Client roles follow at the first
      // credentials sync after the start, which drops the old service's keys.
      if (runAs) await runCommand('chown', ['-R', `${runAs.uid}:${runAs.gid}`, dataDir]);
      if (spec.credentials) await this.singleUser(ctx, pgRestoredRolesSql(this.options.superuser, spec.credentials));
      await rm(restored, { force: true });
    }
    const standbySignal = path.join(dataDir, 'standby.signal');
    if (initialised && spec.role === 'replica' && !(await exists(standbySignal))) await this.rewind(ctx);
    await writeFile(
      path.join(dataDir, 'postgresql.conf'),
      await this.config(ctx, { segmentMb: await walSegmentMb(dataDir) }),
    );
    await this.writeHba(ctx);
    // pg_basebackup -R writes primary_conninfo here, which would override ours on repoint.
    await writeFile(path.join(dataDir, 'postgresql.auto.conf'), '# Managed through postgresql.conf by the cell.\n');
    if (spec.role === 'replica') await writeFile(standbySignal, '');
    else await rm(standbySignal, { force: true });
    if (runAs) await runCommand('chown', ['-R', `${runAs.uid}:${runAs.gid}`, dataDir]);
  }

  /**
   * Copies the cell's certificate, key and CA into the instance's volume (`tls/`), owned by the
   * engine's user: PostgreSQL refuses a key others can read, and a container sees only the volume.
   * Copied on every start, so a renewed certificate takes effect at the next one.
   */
  private async copyTlsFiles(ctx: EngineContext, runAs: RunAs | undefined): Promise<void> {
    const files = this.tlsFiles(ctx.spec);
    if (files) await copyEngineTlsFiles(files, ctx.volumeDir, runAs);
  }

  /**
   * PostgreSQL runs as its system user, who must be able to walk down to the data directory.
   * A cell whose --data-dir sits in a private folder (root's home, a `mktemp -d` directory)
   * would otherwise fail deep inside initdb with a bare "Permission denied".
   */
  private async checkReachable(dataDir: string, runAs: RunAs): Promise<void> {
    try {
      await runCommand('test', ['-w', dataDir], { runAs, timeoutMs: 10_000 });
    } catch {
      throw new SfError(
        ErrorCode.EngineUnavailable,
        `postgres runs as user '${runAs.user}', who cannot reach ${dataDir}: make its parent directories searchable (chmod o+x) or give the cell a --data-dir outside private folders such as /root or a mktemp -d directory`,
      );
    }
  }

  /**
   * A data directory that was a primary (no standby.signal) and must now follow another: a deposed
   * primary may hold WAL the new primary never received, so it is rewound onto the new primary's
   * timeline first (pg_rewind; wal_log_hints makes that possible, and pg_rewind itself finishes
   * crash recovery of a primary that was SIGKILLed). "A restarted old primary comes back
   * as a replica".
   */
  private async rewind(ctx: EngineContext): Promise<void> {
    const { spec, dataDir } = ctx;
    if (!spec.replicaOf)
      throw new SfError(ErrorCode.InvalidInstanceSpec, 'a postgres replica needs replicaOf', 'replicaOf');
    // pg_rewind may start the server in single-user mode (crash recovery of a SIGKILLed primary):
    // it must find a config for this cell, one that keeps the WAL back to the fork.
    await writeFile(
      path.join(dataDir, 'postgresql.conf'),
      renderPostgresConfig(
        { ...ctx, spec: { ...spec, replicaOf: undefined } },
        this.options.superuser,
        undefined,
        { segmentMb: await walSegmentMb(dataDir), keepSize: PG_REWIND_WAL_KEEP_SIZE },
        this.tls !== undefined,
      ),
    );
    // A freshly promoted primary records its new timeline in pg_control only at its next
    // checkpoint; before that pg_rewind sees one timeline and wrongly finds nothing to rewind.
    // A checkpoint writes every dirty buffer: seconds on a loaded host, more than a query's bound.
    await this.query(
      { ...ctx, listenHost: spec.replicaOf.host, port: spec.replicaOf.port },
      'checkpoint',
      PG_CHECKPOINT_TIMEOUT_MS,
    );
    const peer = await this.peerName(ctx, spec.replicaOf.host);
    const source = `host=${peer?.serverName ?? spec.replicaOf.host} port=${spec.replicaOf.port} user=${this.options.superuser} dbname=postgres${pgSslConninfo(ctx, this.tls !== undefined, peer)}`;
    await this.tool(ctx, 'pg_rewind', ['-D', dataDir, '--source-server', source], {
      timeoutMs: 600_000,
      // The password in the environment of the one process that needs it, never in argv.
      env: passwordEnv(spec.credentials?.admin.password),
    });
  }

  async launch(ctx: EngineContext): Promise<LaunchCommand> {
    // SIGINT is PostgreSQL's "fast" shutdown: clients are cut, a checkpoint is written.
    // In a container the image's PATH finds the server, and the executor picks the user.
    if (ctx.tools) return { file: 'postgres', args: ['-D', ctx.dataDir], stopSignal: 'SIGINT' };
    return { file: await this.bin('postgres'), args: ['-D', ctx.dataDir], runAs: this.runAs(), stopSignal: 'SIGINT' };
  }

  async healthy(ctx: EngineContext): Promise<boolean> {
    try {
      return (await this.query(ctx, 'select 1')).trim() === '1';
    } catch {
      return false;
    }
  }

  async position(ctx: EngineContext): Promise<ReplicationPosition | null> {
    const out = await this.query(
      ctx,
      "select pg_is_in_recovery(), coalesce((case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text, '0/0'), coalesce((select status from pg_stat_wal_receiver) = 'streaming', false)",
    );
    const [recovery, lsn, receiving] = out.trim().split('|');
    if (recovery !== 't') return { role: 'primary', position: lsn, value: lsnToValue(lsn) };
    return { role: 'replica', position: lsn, value: lsnToValue(lsn), streaming: receiving === 't' };
  }

  async stoppedPosition(dataDir: string): Promise<ReplicationPosition | null> {
    const lsn = await cleanStopLsn(dataDir);
    return lsn ? { role: 'primary', position: lsn, value: lsnToValue(lsn) } : null;
  }

  async promote(ctx: EngineContext): Promise<void> {
    // Promoting a primary is a no-op, so that control may retry a promote order safely.
    if ((await this.position(ctx))?.role === 'replica') {
      // pg_promote() over the cell's connection: what `pg_ctl promote` does, without a process
      // (a `docker exec` on the docker executor) on the failover's critical path. Its own wait
      // looks every 100 ms; asked every 10 ms here, the new primary is known 50 ms sooner on average.
      await this.query(ctx, 'select pg_promote(false)', 10_000);
      const deadline = Date.now() + 60_000;
      while ((await this.query(ctx, 'select pg_is_in_recovery()', 10_000)).trim() !== 'f') {
        if (Date.now() > deadline)
          throw new SfError(ErrorCode.EngineCommandFailed, `${ctx.spec.instanceId} was not promoted within 60 s`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    await writeFile(
      path.join(ctx.dataDir, 'postgresql.conf'),
      await this.config(
        { ...ctx, spec: { ...ctx.spec, role: 'primary', replicaOf: undefined } },
        { segmentMb: await walSegmentMb(ctx.dataDir) },
      ),
    );
  }

  /** Disk sync and a full volume's read-only default: both reloadable, so no restart. */
  async applySettings(ctx: EngineContext): Promise<void> {
    await writeFile(
      path.join(ctx.dataDir, 'postgresql.conf'),
      await this.config(ctx, { segmentMb: await walSegmentMb(ctx.dataDir) }),
    );
    await this.query(ctx, 'select pg_reload_conf()');
  }

  async repoint(ctx: EngineContext, primary: HostPort): Promise<void> {
    // primary_conninfo is reloadable since PostgreSQL 13: rewrite the config and reload.
    const spec = { ...ctx.spec, role: 'replica' as const, replicaOf: primary };
    await writeFile(
      path.join(ctx.dataDir, 'postgresql.conf'),
      await this.config({ ...ctx, spec }, { segmentMb: await walSegmentMb(ctx.dataDir) }),
    );
    await this.query(ctx, 'select pg_reload_conf()');
  }

  /**
   * A primary that cannot commit is not `running`. First a read that needs no write:
   * client connections exhausted (the superuser's reserved slots let this check in when clients
   * are refused), or sync durability with no synchronous standby connected (every commit would
   * wait). Then the write itself: a transactional `pg_logical_emit_message` writes WAL inside a
   * transaction, so its commit waits for the sync standby like any client's (a bare
   * `txid_current()` does not: a transaction that wrote no WAL before its commit record skips the
   * wait), and it touches no table. PostgreSQL turns off
   * statement_timeout before the commit wait, so the bound is the client's; a check that ran
   * out is cancelled (a cancelled sync wait returns), so checks never pile up as backends.
   */
  async checkCommit(ctx: EngineContext, timeoutMs: number): Promise<string | null> {
    let state: string;
    try {
      state = await this.query(
        ctx,
        "select (select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()) || '|' || " +
          "(current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int) || '|' || " +
          "(select count(*) from pg_stat_replication where sync_state in ('sync', 'quorum')) || '|' || " +
          "current_setting('synchronous_standby_names')",
        timeoutMs,
      );
    } catch (err) {
      return `cannot run a query: ${(err as Error).message}`;
    }
    const [used, limit, syncStandbys, names] = state.trim().split('|');
    if (Number(used) >= Number(limit))
      return `${used} of ${limit} client connections in use: new clients are refused (max_connections)`;
    if (names && Number(syncStandbys) === 0)
      return `no synchronous standby connected (synchronous_standby_names ${quote(names)}): every commit waits for one`;
    try {
      await this.query(
        ctx,
        `select pg_logical_emit_message(true, ${quote(COMMIT_CHECK_APP)}, '')`,
        timeoutMs,
        COMMIT_CHECK_APP,
      );
      return null;
    } catch (err) {
      await this.query(
        ctx,
        `select pg_cancel_backend(pid) from pg_stat_activity where application_name = ${quote(COMMIT_CHECK_APP)} and pid <> pg_backend_pid()`,
      ).catch(() => undefined);
      const why = (err as Error).message;
      return `a write did not commit within ${timeoutMs} ms${/timed out/.test(why) ? '' : `: ${why}`}`;
    }
  }

  /**
   * One SQL statement from the cell over TCP (pg-client.ts), on either executor: no psql process
   * or `docker exec` per statement. Returns psql's unaligned, tuples-only output.
   */
  async query(ctx: EngineContext, sql: string, timeoutMs?: number, appName = 'sf-cell'): Promise<string> {
    const host = ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost;
    return pgQuery(await this.target(ctx, host, appName), sql, timeoutMs ?? this.options.queryTimeoutMs);
  }

  /**
   * The cell's connection: plaintext on loopback, as before engines had certificates (a TLS
   * handshake per health check costs CPU and buys nothing there); verified TLS to another host
   * (pg_rewind's checkpoint on a remote primary).
   */
  private async target(ctx: EngineContext, host: string, applicationName: string): Promise<PgTarget> {
    const loopback = host === 'localhost' || host === '::1' || host.startsWith('127.');
    // An engine with the service's certificate names the service, not its host: verified as that.
    const peer = this.tls && !loopback ? await this.peerName(ctx, host) : undefined;
    return {
      host: peer?.hostaddr ?? host,
      port: ctx.port,
      user: this.options.superuser,
      database: 'postgres',
      password: ctx.spec.credentials?.admin.password,
      applicationName,
      // The cell's own certificate: the engine requires a client certificate over TLS.
      ...(this.tls && !loopback
        ? { caFile: pgTlsPaths(ctx.volumeDir).ca, certFile: this.tls.certFile, keyFile: this.tls.keyFile }
        : {}),
      ...(peer ? { serverName: peer.serverName } : {}),
    };
  }

  /**
   * Statements in one transaction, in one round trip over one connection (they may carry
   * password verifiers, which never reach a command line or a log).
   */
  private async script(ctx: EngineContext, statements: string[]): Promise<void> {
    if (!statements.length) return;
    const host = ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost;
    // Role changes must not wait for a sync standby that may not exist yet (a new primary);
    // a set lost with its primary is applied again, since every spec carries it.
    // A full volume makes transactions read-only by default (docs/volumes.md); the platform's
    // own role changes still apply, so a key can be created to clean up.
    const sql = [
      'BEGIN',
      'SET LOCAL transaction_read_only = off',
      'SET LOCAL synchronous_commit = local',
      ...statements,
      'COMMIT',
    ].join(';\n');
    await pgQuery(await this.target(ctx, host, 'sf-cell'), `${sql};`, this.options.queryTimeoutMs * 4);
  }

  /**
   * Client roles follow the service's keys. Roles are cluster-wide and replicate, so
   * only a primary applies them; standbys get them through WAL.
   */
  async applyCredentials(ctx: EngineContext): Promise<void> {
    const creds = ctx.spec.credentials;
    if (!creds || (await this.position(ctx))?.role !== 'primary') return;
    const out = await this.query(
      ctx,
      // Direct members only: pg_has_role() would count the superuser, a member of every role.
      `select m.rolname from pg_auth_members a join pg_roles m on m.oid = a.member join pg_roles g on g.oid = a.roleid where g.rolname = ${pgLiteral(PG_CLIENTS_ROLE)}`,
    );
    const existing = out
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    await this.script(ctx, [
      ...pgSyncUsersSql(existing, creds.users),
      // A service created before monitoring users existed gets it here once given one.
      ...(creds.monitoring ? pgMonitorRoleSql(creds.monitoring) : []),
    ]);
  }

  /**
   * pg_basebackup from the running server as the replication user: a cluster copy with the WAL
   * to make it consistent (`-X stream`), at the fast checkpoint's instant. Restored, it replays
   * that WAL once and is exactly the data as of the backup's end.
   */
  async snapshot(ctx: EngineContext, dir: string): Promise<void> {
    const host = ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost;
    const creds = ctx.spec.credentials?.replication;
    await this.tool(
      ctx,
      'pg_basebackup',
      [
        '-h',
        host,
        '-p',
        String(ctx.port),
        '-U',
        creds?.username ?? this.options.superuser,
        '-D',
        dir,
        '-X',
        'stream',
        '-c',
        'fast',
        '--no-manifest',
        // Replication is TLS only on a cell with a certificate, and asks for the instance's.
        ...(this.tls ? ['-d', pgSslConninfo(ctx, true, await this.peerName(ctx, host)).trim()] : []),
      ],
      { timeoutMs: 3_600_000, env: passwordEnv(creds?.password) },
    );
  }

  /** The platform roles of a new cluster, set in single-user mode (statements on stdin). */
  private async bootstrapRoles(ctx: EngineContext, creds: InstanceCredentials): Promise<void> {
    await this.singleUser(ctx, pgBootstrapSql(this.options.superuser, creds));
  }

  private async singleUser(ctx: EngineContext, statements: string[]): Promise<void> {
    await this.tool(
      ctx,
      'postgres',
      ['--single', '-D', ctx.dataDir, '-c', 'exit_on_error=on', '-c', 'unix_socket_directories=', 'postgres'],
      { timeoutMs: 600_000, input: statements.join('\n') + '\n' },
    );
  }

  /** The data directory's owner: the engine's user where it runs. */
  private owner(ctx: EngineContext): RunAs | undefined {
    return ctx.tools ? ctx.tools.owner : this.runAs();
  }

  /**
   * Runs a helper where the engine runs: in its container through `ctx.tools`, or this host's
   * binary, as the server's user except psql (a client, which runs as the cell).
   */
  private async tool(ctx: EngineContext, name: Binary, args: string[], options: ToolOptions = {}): Promise<string> {
    if (ctx.tools) return ctx.tools.run(name, args, options);
    return runCommand(await this.bin(name), args, { ...options, runAs: name === 'psql' ? undefined : this.runAs() });
  }

  /**
   * The server is found on PATH or in `binDirs`; every client tool comes from the server's own
   * directory when it has one, so the tools match the server's version and are never Debian's
   * `pg_wrapper` (/usr/bin/psql is a Perl script that picks a cluster on every call: 3x the
   * start-up cost of psql itself, paid by each health check, position read and commit check).
   */
  private async find(name: Binary): Promise<string | undefined> {
    if (this.bins.has(name)) return this.bins.get(name);
    let found: string | undefined;
    if (name !== 'postgres') {
      const server = await this.find('postgres');
      const serverDir = server ? path.dirname(await realpath(server).catch(() => server)) : undefined;
      if (serverDir) found = await findBinary(name, [], [serverDir]);
    }
    found ??= await findBinary(name, this.options.binDirs);
    this.bins.set(name, found);
    return found;
  }

  private async bin(name: Binary): Promise<string> {
    const found = await this.find(name);
    if (!found)
      throw new SfError(
        ErrorCode.EngineUnavailable,
        `${name} not found on PATH or in ${this.options.binDirs.join(', ')}`,
      );
    return found;
  }
}
