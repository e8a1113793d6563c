/**
 * Engine `tcp`: any command that listens on a port. The spec gives the command with `{port}`,
 * `{host}` and `{dataDir}` placeholders; health is a TCP connect. It has no replication, so
 * promote and repoint are refused with a stable code.
 */
import { connect } from 'node:net';
import type { Availability, Engine, EngineContext, LaunchCommand, ReplicationPosition } from './engine';
import { ErrorCode, SfError } from '../common';
import type { RunAs } from './run-command';

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

  async available(): Promise<Availability> {
    return { ok: true, reason: '' };
  }

  runAs(): RunAs | undefined {
    return undefined;
  }

  async prepare(ctx: EngineContext): Promise<void> {
    if (!ctx.spec.command) throw new SfError(ErrorCode.InvalidInstanceSpec, 'engine tcp needs a command', 'command');
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
