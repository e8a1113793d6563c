/**
 * Engine `tcp`: any command that listens on a port. The spec gives the command with `{port}`,
 * `{host}` and `{dataDir}` placeholders; health is a TCP connect. It has no replication, so
 * promote and repoint are refused with a stable code.
 */
import { realpath } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Availability, Engine, EngineContext, LaunchCommand, ReplicationPosition } from './engine';
import { ErrorCode, SfError } from '../common';
import type { RunAs } from './run-command';
import { engineUser, engineUserProblem } from './engine-user';

export interface TcpEngineOptions {
  /** System user the commands run as when the cell is root. @default 'sf-instance' */
  systemUser?: string;
  /**
   * Executables this cell may run (`sf cell --tcp-allow FILE`), compared after resolving
   * symbolic links; empty = any (the API already asks for admin scope). @default []
   */
  allow?: string[];
}

/** @default user of `TcpEngineOptions.systemUser` */
export const DEFAULT_TCP_USER = 'sf-instance';

export function expandPlaceholders(value: string, ctx: EngineContext): string {
  return value
    .replace(/\{port\}/g, String(ctx.port))
    .replace(/\{host\}/g, ctx.listenHost)
    .replace(/\{dataDir\}/g, ctx.dataDir);
}

export function tcpConnects(host: string, port: number, timeoutMs = 2_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export class TcpEngine implements Engine {
  readonly kind = 'tcp' as const;
  private readonly user: string;
  private readonly allow: string[];

  constructor(options: TcpEngineOptions = {}) {
    this.user = options.systemUser ?? DEFAULT_TCP_USER;
    this.allow = options.allow ?? [];
  }

  async available(): Promise<Availability> {
    const problem = engineUserProblem(this.user, 'tcp');
    return problem ? { ok: false, reason: problem } : { ok: true, reason: '' };
  }

  /** A `tcp` command is whatever a user asked for: it never runs as root. */
  runAs(): RunAs | undefined {
    return engineUser(this.user, 'tcp');
  }

  async prepare(ctx: EngineContext): Promise<void> {
    if (!ctx.spec.command) throw new SfError(ErrorCode.InvalidInstanceSpec, 'engine tcp needs a command', 'command');
    if (this.allow.length) await this.checkAllowed(expandPlaceholders(ctx.spec.command.file, ctx));
  }

  /** The cell's allow-list, by real path, so a symlink to a listed file is that file and no other. */
  private async checkAllowed(file: string): Promise<void> {
    const real = await realpath(file).catch(() => file);
    const allowed = await Promise.all(this.allow.map((a) => realpath(a).catch(() => a)));
    if (!allowed.includes(real)) {
      throw new SfError(
        ErrorCode.TcpCommandNotAllowed,
        `${file} is not among the executables this cell may run (sf cell --tcp-allow): ${this.allow.join(', ')}`,
        'command.file',
      );
    }
  }

  async launch(ctx: EngineContext): Promise<LaunchCommand> {
    const command = ctx.spec.command;
    if (!command) throw new SfError(ErrorCode.InvalidInstanceSpec, 'engine tcp needs a command', 'command');
    return {
      file: expandPlaceholders(command.file, ctx),
      args: command.args.map((a) => expandPlaceholders(a, ctx)),
      env: { PORT: String(ctx.port), DATA_DIR: ctx.dataDir },
      stopSignal: 'SIGTERM',
    };
  }

  healthy(ctx: EngineContext): Promise<boolean> {
    return tcpConnects(ctx.listenHost === '0.0.0.0' ? '127.0.0.1' : ctx.listenHost, ctx.port);
  }

  async position(): Promise<ReplicationPosition | null> {
    return null;
  }

  async promote(): Promise<void> {
    throw new SfError(ErrorCode.EngineUnsupported, 'engine tcp has no replication to promote');
  }

  async repoint(): Promise<void> {
    throw new SfError(ErrorCode.EngineUnsupported, 'engine tcp has no replication to repoint');
  }
}
