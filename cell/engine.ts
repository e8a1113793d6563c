/**
 * The `Engine` interface: what a kind of stateful server (redis, postgres, any TCP command) needs
 * from the cell. An engine knows how to lay out and configure a data directory, which foreground
 * command runs it, how to check health and how its replication is driven. It never owns the
 * process: executors (executor.ts) start, stop and kill it, so every engine works with every
 * executor.
 */
import type { EngineKind, HostPort, InstanceSpec } from '../protocol';
import type { RunAs, RunCommandOptions } from './run-command';

export interface Availability {
  ok: boolean;
  /** Why it is not available (a missing binary, no daemon...), empty when ok. */
  reason: string;
}

/** Everything an engine needs to know about one instance on one cell. */
export interface EngineContext {
  spec: InstanceSpec;
  /** The engine's own data directory, inside the instance's volume. */
  dataDir: string;
  volumeDir: string;
  port: number;
  /** Address the server binds to. */
  listenHost: string;
  /** Address others (replicas, routers) use to reach it. */
  advertiseHost: string;
  /** The volume reached its size: the engine must refuse writes (docs/volumes.md). */
  volumeFull?: boolean;
  /**
   * Where the engine's helpers (initdb, pg_basebackup, psql...) run and as whom; absent = on
   * this host with its binaries (the process executor). The docker executor runs them inside
   * the engine's image, so a docker cell needs no engine installed.
   */
  tools?: EngineTools;
}

export type ToolOptions = Omit<RunCommandOptions, 'runAs' | 'cwd'>;

export interface EngineTools {
  /** Runs a helper by name as the engine's user, where the engine runs; resolves with its stdout. */
  run(name: string, args: string[], options?: ToolOptions): Promise<string>;
  /** The engine's user there, as numbers for the host: owner of the data directory. */
  readonly owner: RunAs | undefined;
}

export interface LaunchCommand {
  file: string;
  args: string[];
  env?: Record<string, string>;
  /** Engines that refuse to run as root (postgres) name the user to run as. */
  runAs?: RunAs;
  /** The signal that asks for a clean, durable shutdown. */
  stopSignal: NodeJS.Signals;
}

export interface ReplicationPosition {
  role: 'primary' | 'replica';
  /** Engine-native text: Redis offset, PostgreSQL LSN `X/Y`. */
  position: string;
  /** The same as a decimal integer string, comparable with BigInt. */
  value: string;
  /**
   * A replica only: it has its first full copy and follows the primary's stream now (Redis link
   * up and no sync in progress; PostgreSQL WAL receiver streaming). Absent when the engine cannot say.
   */
  streaming?: boolean;
}

export interface Engine {
  readonly kind: EngineKind;
  available(): Promise<Availability>;
  /** Paths (e.g. the data dir) must be owned by this user; undefined = the cell's own user. */
  runAs(): RunAs | undefined;
  /**
   * Makes the data directory ready to start: first-time initialisation (initdb, a base backup
   * from the primary) and the generated configuration. Idempotent: an initialised directory is
   * kept, only the configuration is rewritten from the spec.
   */
  prepare(ctx: EngineContext): Promise<void>;
  /**
   * True when an instance of `spec` serves TLS on its port with the cell's certificate (reported
   * to control, which tells routers to re-encrypt to it). Absent: never.
   */
  servesTls?(spec: InstanceSpec): boolean;
  /**
   * Loads a renewed or replaced certificate into the running server when its source files
   * changed (new connections get it, established ones keep theirs); true when it did. Called by
   * the health probe. Absent: a new certificate takes effect at the next start.
   */
  refreshTls?(ctx: EngineContext): Promise<boolean>;
  launch(ctx: EngineContext): Promise<LaunchCommand>;
  healthy(ctx: EngineContext): Promise<boolean>;
  position(ctx: EngineContext): Promise<ReplicationPosition | null>;
  /** Turns a replica into a primary. */
  promote(ctx: EngineContext): Promise<void>;
  /** Makes a replica follow another primary. */
  repoint(ctx: EngineContext, primary: HostPort): Promise<void>;
  /**
   * On a primary: client writes are refused (blocked) for `timeoutMs` while replication goes on,
   * so the position stops moving and a replica can reach it exactly; `promote` lifts it. Engines
   * that cannot do this without a restart omit it (a switchover stops them instead).
   */
  pauseWrites?(ctx: EngineContext, timeoutMs: number): Promise<void>;
  /**
   * The position a clean stop left in the data directory `dataDir` (PostgreSQL: the shutdown
   * checkpoint, which every acknowledged write precedes); null when the last stop was not clean.
   * Engines that cannot pause report it, so that a switchover can stop them at once and still know
   * the position its target must reach.
   */
  stoppedPosition?(dataDir: string): Promise<ReplicationPosition | null>;
  /**
   * On a primary: performs a write that must commit within `timeoutMs` (with sync durability,
   * acknowledged by a standby) and returns why it cannot, or null when it can (a
   * primary that cannot commit is not `running`). Engines without a notion of writes omit it.
   */
  checkCommit?(ctx: EngineContext, timeoutMs: number): Promise<string | null>;
  /**
   * Makes the running engine's users those of `ctx.spec.credentials`: creates and
   * updates them, drops the others and ends their sessions. Idempotent. Engines without users
   * omit it.
   */
  applyCredentials?(ctx: EngineContext): Promise<void>;
  /**
   * Applies the settings a running engine can change without a restart: its disk sync
   * (`ctx.spec.diskSync`) and the refusal of writes of a full volume (`ctx.volumeFull`), to the
   * live engine and to its configuration file, so a restart keeps them.
   */
  applySettings?(ctx: EngineContext): Promise<void>;
  /**
   * Writes a consistent copy of the running engine's data into `dir` (empty, inside the volume,
   * owned by the engine's user), laid out so that copying it into an empty data directory and
   * starting there gives exactly that data (docs/volumes.md, Snapshots). Engines that cannot
   * omit it.
   */
  snapshot?(ctx: EngineContext, dir: string): Promise<void>;
}

/** In a volume restored from a snapshot until its engine has made the data its own (credentials). */
export const RESTORED_MARKER = 'sf-restored';
