/**
 * Engine `redis`: redis-server with a generated config file in its data directory.
 * Durability maps to AOF fsync policy and, for sync with replicas, `min-replicas-to-write 1`
 * (DESIGN.md "Durability maps to the engine's own settings").
 */
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import { defaultDiskSync, type DiskSync, type HostPort, type InstanceSpec } from '../protocol';
import type { Availability, Engine, EngineContext, LaunchCommand, ReplicationPosition } from './engine';
import { defaultListenBacklog, ErrorCode, SfError } from '../common';
import { findBinary, type RunAs } from './run-command';
import { withDescriptorTable } from './engine-fd-table';
import { engineUser, engineUserProblem } from './engine-user';
import { redisAclUsers, renderRedisAclFile } from './engine-credentials';
import { copyEngineTlsFiles, engineTlsPaths, tlsFilesChanged, type EngineTlsFiles } from './engine-tls';

export interface RedisEngineOptions {
  /** @default found on PATH */
  redisServer?: string;
  /** @default 2000 */
  commandTimeoutMs?: number;
  /** System user redis-server runs as when the cell is root. @default 'redis' */
  systemUser?: string;
  /**
   * The cell's certificate from the platform CA (docs/tls.md): an instance whose spec asks for
   * TLS serves TLS only on its port, replicates over TLS, and every call the cell makes to it
   * verifies it against the CA. @default none (every instance plaintext)
   */
  tls?: EngineTlsFiles;
}

export const CONFIG_FILE = 'redis.conf';
/** The engine's unix socket, in its data directory: how the instance's own sidecars reach it. */
export const REDIS_SOCKET_FILE = 'redis.sock';
/** A unix socket's path must fit `sun_path` (108 bytes with its terminating NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

/**
 * Descriptors a redis-server may hold: its client limit (`maxclients`, Redis's default of 10,000,
 * which the generated configuration keeps) and the 32 it keeps for itself (CONFIG_MIN_RESERVED_FDS).
 */
export const REDIS_DESCRIPTOR_SLOTS = 10_000 + 32;

/**
 * Where the instance's unix socket is, or undefined when the volume's path is too long for one.
 * Sidecars use it instead of the TCP port: on a TLS-only engine a TCP client must verify the
 * certificate, which names the service and the router, not the cell's address, and the Redis
 * exporter cannot be told which name to expect. A socket in the volume needs no name, never
 * leaves the host, and only the engine's user can open it (the sidecars run as that user). The
 * volume copies skip it (not a regular file) and redis-server replaces a stale one at start.
 */
export function redisSocketPath(dataDir: string): string | undefined {
  const file = path.join(dataDir, REDIS_SOCKET_FILE);
  return Buffer.byteLength(file) <= MAX_SOCKET_PATH_BYTES ? file : undefined;
}
/** The ACL file of a service with credentials: hashes only, `default` off. */
export const ACL_FILE = 'users.acl';
/** The key the commit check writes (with a 60 s TTL, so it never accumulates). */
export const COMMIT_CHECK_KEY = '__sf_commit_check';

/** Redis's AOF fsync policy for each disk sync mode. */
export const REDIS_APPENDFSYNC: Readonly<Record<DiskSync, string>> = {
  always: 'always',
  interval: 'everysec',
  off: 'no',
};

/**
 * A full volume makes Redis refuse every command that may add memory (`SET`, `LPUSH`... answer
 * `OOM command not allowed`) while reads, `DEL`, `UNLINK` and `FLUSHDB` still work, so a client
 * can make room: `maxmemory 1` with `noeviction` is always exceeded, and never evicts data.
 */
function redisVolumeSettings(full: boolean): Array<[string, string]> {
  return full
    ? [
        ['maxmemory', '1'],
        ['maxmemory-policy', 'noeviction'],
      ]
    : [['maxmemory', '0']];
}

/**
 * TLS only, on the instance's one port: clients reach an engine through the router, which
 * re-encrypts to it, so a plaintext port would only be a way around the policy. Every TCP client
 * must present a certificate the platform CA signed (`tls-auth-clients yes`), besides its ACL
 * user's password: the router presents its own, the cell its cell's, and a replica the engine's
 * certificate (Redis's client side uses `tls-cert-file` when no `tls-client-cert-file` is set; the
 * platform CA issues every certificate for clientAuth too). A replica verifies its primary
 * against the CA (`tls-ca-cert-file`) before it sends its credentials.
 */
function redisTlsSettings(ctx: EngineContext): string[] {
  const files = engineTlsPaths(ctx.volumeDir);
  return [
    'port 0',
    `tls-port ${ctx.port}`,
    `tls-cert-file ${files.cert}`,
    `tls-key-file ${files.key}`,
    `tls-ca-cert-file ${files.ca}`,
    'tls-auth-clients yes',
    'tls-replication yes',
  ];
}

function redisSocketSettings(dataDir: string): string[] {
  const socket = redisSocketPath(dataDir);
  return socket ? [`unixsocket ${socket}`, 'unixsocketperm 700'] : [];
}

/** Renders redis.conf from the spec; pure so it is unit-testable. `tls`: serve TLS (redisTlsSettings). */
export function renderRedisConfig(ctx: EngineContext, primary?: HostPort, tls = false): string {
  const { spec } = ctx;
  const lines = [
    '# Generated by the Service Foundry cell on every start; edits are overwritten.',
    ...(tls ? redisTlsSettings(ctx) : [`port ${ctx.port}`]),
    `bind ${ctx.listenHost}`,
    // A reconnect storm through the router reaches the engine as fast as the router accepts it:
    // Redis's own default (511) would drop SYNs behind a router that queues thousands.
    `tcp-backlog ${defaultListenBacklog()}`,
    ...redisSocketSettings(ctx.dataDir),
    'protected-mode no',
    'daemonize no',
    `dir ${ctx.dataDir}`,
    'appendonly yes',
    `appendfsync ${REDIS_APPENDFSYNC[spec.diskSync ?? defaultDiskSync(spec.durability, 'redis')]}`,
    ...redisVolumeSettings(ctx.volumeFull === true).map(([k, v]) => `${k} ${v}`),
    // AOF is the durable record; RDB snapshots would only add fork pauses.
    'save ""',
    'logfile ""',
    `replica-announce-ip ${ctx.advertiseHost}`,
    `replica-announce-port ${ctx.port}`,
    // A replica (re)joining after a failover must sync now, not after the default 5 s wait for
    // other replicas to batch with.
    'repl-diskless-sync-delay 0',
  ];
  if (spec.durability === 'sync' && spec.replicas > 0) {
    // A primary refuses writes unless a replica acknowledged recently: the closest Redis has to
    // synchronous replication (with WAIT on the client side for a per-write guarantee).
    lines.push('min-replicas-to-write 1', 'min-replicas-max-lag 10');
  }
  if (spec.credentials) {
    // Every instance may become a replica (repoint), so each knows how to authenticate to a
    // primary; the file is 0600 in a 0700 directory of the redis user.
    lines.push(
      `aclfile ${path.join(ctx.dataDir, ACL_FILE)}`,
      `masteruser ${spec.credentials.replication.username}`,
      `masterauth ${spec.credentials.replication.password}`,
    );
  }
  const upstream = primary ?? (spec.role === 'replica' ? spec.replicaOf : undefined);
  if (upstream) lines.push(`replicaof ${upstream.host} ${upstream.port}`);
  return lines.join('\n') + '\n';
}

export class RedisEngine implements Engine {
  readonly kind = 'redis' as const;
  private readonly options: RedisEngineOptions;

  constructor(options: RedisEngineOptions = {}) {
    this.options = options;
  }

  async available(): Promise<Availability> {
    const bin = await this.binary();
    if (!bin) return { ok: false, reason: 'redis-server not found on PATH' };
    const problem = engineUserProblem(this.options.systemUser ?? 'redis', 'redis');
    return problem ? { ok: false, reason: problem } : { ok: true, reason: '' };
  }

  /** Never root: a client that reached CONFIG SET dir + SAVE could write any file. */
  runAs(): RunAs | undefined {
    return engineUser(this.options.systemUser ?? 'redis', 'redis');
  }

  async prepare(ctx: EngineContext): Promise<void> {
    if (ctx.spec.role === 'replica' && !ctx.spec.replicaOf) {
      throw new SfError(ErrorCode.InvalidInstanceSpec, 'a redis replica needs replicaOf', 'replicaOf');
    }
    if (ctx.spec.credentials)
      await writeFile(path.join(ctx.dataDir, ACL_FILE), renderRedisAclFile(ctx.spec.credentials), { mode: 0o600 });
    const tls = this.servesTls(ctx.spec);
    if (tls)
      await copyEngineTlsFiles(this.tlsFiles(ctx.spec)!, ctx.volumeDir, ctx.tools ? ctx.tools.owner : this.runAs());
    await writeFile(path.join(ctx.dataDir, CONFIG_FILE), renderRedisConfig(ctx, undefined, tls), { mode: 0o600 });
  }

  /** TLS when the spec asks for it and the cell has a certificate to serve it with. */
  servesTls(spec: InstanceSpec): boolean {
    return spec.tls === true && this.options.tls !== undefined;
  }

  /**
   * The files an instance serves TLS with: its service's certificate when the spec names one (the
   * route's, so `sf rotate-certificate` reaches router and engines alike), else the cell's; the
   * platform CA either way. Redis does not check a primary's name when a replica connects, so
   * a certificate naming the service serves replication as well as the cell's did.
   */
  private tlsFiles(spec: InstanceSpec): EngineTlsFiles | undefined {
    if (!this.options.tls) return undefined;
    return spec.tlsCertificate ? { ...spec.tlsCertificate, caFile: this.options.tls.caFile } : this.options.tls;
  }

  /**
   * A renewed certificate (its source files changed) is copied into the volume and loaded with
   * `CONFIG SET` of the same paths, which makes redis-server build a new TLS context: new
   * connections get the new certificate, established ones keep their session.
   */
  async refreshTls(ctx: EngineContext): Promise<boolean> {
    const files = this.tlsFiles(ctx.spec);
    if (!files || !this.servesTls(ctx.spec) || !(await tlsFilesChanged(files, ctx.volumeDir))) return false;
    const copies = await copyEngineTlsFiles(files, ctx.volumeDir, ctx.tools ? ctx.tools.owner : this.runAs());
    await this.command(ctx, (r) =>
      r.call('CONFIG', 'SET', 'tls-cert-file', copies.cert, 'tls-key-file', copies.key, 'tls-ca-cert-file', copies.ca),
    );
    return true;
  }

  /**
   * Live user changes (service keys): `ACL SETUSER` for every user of the set, `ACL DELUSER` for
   * the others (which also disconnects their clients), then `ACL SAVE` so a restart keeps them.
   */
  async applyCredentials(ctx: EngineContext): Promise<void> {
    const creds = ctx.spec.credentials;
    if (!creds) return;
    const wanted = redisAclUsers(creds);
    await this.command(ctx, async (r) => {
      const existing = (await r.call('ACL', 'USERS')) as string[];
      for (const [name, rules] of wanted) await r.call('ACL', 'SETUSER', name, 'reset', ...rules.split(' '));
      for (const name of existing) if (name !== 'default' && !wanted.has(name)) await r.call('ACL', 'DELUSER', name);
      await r.call('ACL', 'SAVE');
    });
  }

  async launch(ctx: EngineContext): Promise<LaunchCommand> {
    const args = [path.join(ctx.dataDir, CONFIG_FILE)];
    // In a container the image's PATH finds the server, and bash (the image is Debian's).
    if (ctx.tools)
      return withDescriptorTable({ file: 'redis-server', args, stopSignal: 'SIGTERM' }, REDIS_DESCRIPTOR_SLOTS, 'bash');
    const bin = await this.binary();
    if (!bin) throw new SfError(ErrorCode.EngineUnavailable, 'redis-server not found on PATH');
    const launch: LaunchCommand = { file: bin, args, stopSignal: 'SIGTERM' };
    const bash = await findBinary('bash');
    return bash ? withDescriptorTable(launch, REDIS_DESCRIPTOR_SLOTS, bash) : launch;
  }

  async healthy(ctx: EngineContext): Promise<boolean> {
    try {
      return (await this.command(ctx, (r) => r.ping())) === 'PONG';
    } catch {
      return false;
    }
  }

  async position(ctx: EngineContext): Promise<ReplicationPosition | null> {
    const info = parseInfo(await this.command(ctx, (r) => r.info('replication')));
    const role = info.role === 'master' ? 'primary' : 'replica';
    // A replica's own processed offset is slave_repl_offset; a primary's is master_repl_offset.
    const offset = role === 'primary' ? info.master_repl_offset : (info.slave_repl_offset ?? info.master_repl_offset);
    const value = /^\d+$/.test(offset ?? '') ? String(offset) : '0';
    if (role === 'primary') return { role, position: value, value };
    // During a full sync a replica reports offset 1 (Redis's placeholder) over its old data set.
    const streaming = info.master_link_status === 'up' && info.master_sync_in_progress !== '1';
    return { role, position: value, value, streaming };
  }

  async promote(ctx: EngineContext): Promise<void> {
    // UNPAUSE: a primary whose switchover was abandoned is confirmed by a promote and takes
    // writes again at once (a no-op when nothing is paused).
    await this.command(ctx, async (r) => {
      await r.call('REPLICAOF', 'NO', 'ONE');
      await r.call('CLIENT', 'UNPAUSE');
    });
    await this.rewriteConfig(ctx);
  }

  /**
   * `CLIENT PAUSE ms WRITE`: clients' write commands block (a client sees no answer, so nothing
   * is acknowledged) while reads, the replication stream and replicas' acknowledgements go on.
   * Keys do not expire or get evicted and no PING goes to replicas during the pause, so
   * `master_repl_offset` stays where it is: the exact goal of a switchover's catch-up.
   */
  async pauseWrites(ctx: EngineContext, timeoutMs: number): Promise<void> {
    await this.command(ctx, (r) => r.call('CLIENT', 'PAUSE', String(timeoutMs), 'WRITE'));
  }

  async repoint(ctx: EngineContext, primary: HostPort): Promise<void> {
    await this.command(ctx, (r) => r.call('REPLICAOF', primary.host, String(primary.port)));
    await this.rewriteConfig(ctx, primary);
  }

  /** Disk sync and a full volume's refusal of writes, live (`CONFIG SET`) and in redis.conf. */
  async applySettings(ctx: EngineContext): Promise<void> {
    const appendfsync = REDIS_APPENDFSYNC[ctx.spec.diskSync ?? defaultDiskSync(ctx.spec.durability, 'redis')];
    await this.command(ctx, async (r) => {
      for (const [k, v] of [['appendfsync', appendfsync], ...redisVolumeSettings(ctx.volumeFull === true)])
        await r.call('CONFIG', 'SET', k, v);
    });
    await this.rewriteConfig(ctx, ctx.spec.role === 'replica' ? ctx.spec.replicaOf : undefined);
  }

  /**
   * A real write on the primary: `SET` of a short-lived key (refused with NOREPLICAS when
   * `min-replicas-to-write` is not met), and with sync durability `WAIT 1` within the bound, the
   * same acknowledgement a sync client waits for. A full `maxclients` shows as a refused connect.
   */
  async checkCommit(ctx: EngineContext, timeoutMs: number): Promise<string | null> {
    const sync = ctx.spec.durability === 'sync' && ctx.spec.replicas > 0;
    try {
      return await this.command(
        ctx,
        async (r) => {
          await r.set(COMMIT_CHECK_KEY, String(Date.now()), 'PX', 60_000);
          if (!sync) return null;
          const acked = Number(await r.call('WAIT', '1', String(timeoutMs)));
          return acked >= 1 ? null : `no replica acknowledged a write within ${timeoutMs} ms (WAIT 1)`;
        },
        timeoutMs + 1_000,
      );
    } catch (err) {
      return `a write did not commit: ${(err as Error).message}`;
    }
  }

  /**
   * BGSAVE: a fork writes the dataset as of one instant, whatever clients do meanwhile. The RDB
   * becomes the base of a fresh AOF (manifest, empty increment) so that a restored Redis, which
   * runs with `appendonly yes` and would ignore a bare dump.rdb, loads it.
   */
  async snapshot(ctx: EngineContext, dir: string): Promise<void> {
    const rdb = path.join(ctx.dataDir, 'dump.rdb');
    await rm(rdb, { force: true });
    const savesOf = (info: string): number => Number(parseInfo(info).rdb_saves ?? 0);
    const before = savesOf(await this.command(ctx, (r) => r.info('persistence')));
    // SCHEDULE: an AOF rewrite in progress delays the save instead of refusing it.
    await this.command(ctx, (r) => r.call('BGSAVE', 'SCHEDULE'));
    const deadline = Date.now() + 600_000;
    for (;;) {
      const info = parseInfo(await this.command(ctx, (r) => r.info('persistence')));
      if (Number(info.rdb_saves ?? 0) > before && info.rdb_bgsave_in_progress === '0') {
        if (info.rdb_last_bgsave_status !== 'ok')
          throw new SfError(ErrorCode.SnapshotFailed, `BGSAVE failed on ${ctx.spec.instanceId} (see its log)`);
        break;
      }
      if (Date.now() > deadline)
        throw new SfError(ErrorCode.SnapshotFailed, `BGSAVE did not finish within 600 s on ${ctx.spec.instanceId}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const aofDir = path.join(dir, 'appendonlydir');
    await mkdir(aofDir, { recursive: true });
    await copyFile(rdb, path.join(aofDir, 'appendonly.aof.1.base.rdb'));
    await writeFile(path.join(aofDir, 'appendonly.aof.1.incr.aof'), '');
    await writeFile(
      path.join(aofDir, 'appendonly.aof.manifest'),
      'file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n',
    );
    await rm(rdb, { force: true });
  }

  /** Keeps the config file in line with the live role, so an engine restart keeps it too. */
  private async rewriteConfig(ctx: EngineContext, primary?: HostPort): Promise<void> {
    const spec = primary
      ? { ...ctx.spec, role: 'replica' as const, replicaOf: primary }
      : { ...ctx.spec, role: 'primary' as const, replicaOf: undefined };
    await writeFile(
      path.join(ctx.dataDir, CONFIG_FILE),
      renderRedisConfig({ ...ctx, spec }, undefined, this.servesTls(spec)),
    );
  }

  private async binary(): Promise<string | undefined> {
    return this.options.redisServer ?? (await findBinary('redis-server'));
  }

  private async command<T>(ctx: EngineContext, fn: (r: Redis) => Promise<T>, timeoutMs?: number): Promise<T> {
    const timeout = timeoutMs ?? this.options.commandTimeoutMs ?? 2_000;
    const admin = ctx.spec.credentials?.admin;
    // With TLS the engine is verified against the platform CA, by its service's name when it
    // presents the service's certificate, else by the address connected to; the cell presents
    // its own certificate, which the engine requires of every client.
    const own = this.options.tls;
    const tls =
      own && this.servesTls(ctx.spec)
        ? {
            ca: await readFile(own.caFile),
            cert: await readFile(own.certFile),
            key: await readFile(own.keyFile),
            ...(ctx.spec.tlsCertificate ? { servername: ctx.spec.service } : {}),
          }
        : undefined;
    const client = new Redis({
      host: ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost,
      port: ctx.port,
      ...(tls ? { tls } : {}),
      // The platform's own management user, never a client's.
      ...(admin ? { username: admin.username, password: admin.password } : {}),
      lazyConnect: true,
      connectTimeout: timeout,
      commandTimeout: timeout,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
    client.on('error', () => {
      // Reported through the rejected command; the event only needs a listener.
    });
    try {
      await client.connect();
      return await fn(client);
    } finally {
      client.disconnect();
    }
  }
}

export function parseInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}
