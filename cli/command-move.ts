/**
 * `sf move NAME --to CELL [--instance ID] [--wait]` (docs/volumes.md, Moving a volume): starts a
 * move (`POST .../actions/move`) and, with `--wait`, follows it (`GET /v3/moves/:id`) with a
 * progress bar of the bytes copied, the rate and the ETA on a terminal, plain lines otherwise.
 */
import type { Command } from 'commander';
import { ErrorCode, SfError } from '../common/errors';
import type { MoveView } from '../control/services/volume-mover';
import { ApiClient } from './api-client';
import { exitWithError, parseIntFlag } from './cli-support';
import { printResult } from './output-table';
import { startProgress } from './progress';

interface MoveFlags {
  to: string;
  instance?: string;
  method?: string;
  wait?: boolean;
  timeout: string;
  json?: boolean;
}

const MB = 1024 * 1024;

/** `12.0/50.0 MB, 8.1 MB/s, ETA 5 s` */
export function moveStatus(m: MoveView): string {
  const total = m.total_bytes ? `/${(m.total_bytes / MB).toFixed(1)}` : '';
  const rate = m.rate_bps ? `, ${(m.rate_bps / MB).toFixed(1)} MB/s` : '';
  const eta = m.eta_s !== null && m.state === 'copying' ? `, ETA ${m.eta_s} s` : '';
  const phase =
    m.phase === 1
      ? m.method === 'catch-up'
        ? `${m.target_instance} catching up while it serves`
        : 'copying while it serves'
      : m.state === 'starting'
        ? 'starting on target'
        : m.method === 'catch-up'
          ? 'switching roles'
          : 'final copy';
  return `${phase}: ${(m.bytes / MB).toFixed(1)}${total} MB${rate}${eta}`;
}

async function move(name: string, flags: MoveFlags): Promise<void> {
  if (flags.method !== undefined && flags.method !== 'catch-up' && flags.method !== 'copy')
    throw new SfError(ErrorCode.InvalidRequest, `--method must be catch-up or copy, not '${flags.method}'`);
  const timeoutMs = parseIntFlag(flags.timeout, '--timeout', 1) * 1000;
  const client = await ApiClient.fromEnv();
  let view = await client.request<MoveView>('POST', `/v3/service_instances/${encodeURIComponent(name)}/actions/move`, {
    to: flags.to,
    ...(flags.instance ? { instance: flags.instance } : {}),
    ...(flags.method ? { method: flags.method } : {}),
  });
  if (flags.wait) {
    const total = view.total_bytes ?? undefined;
    const progress = flags.json
      ? { update: () => undefined, stop: () => undefined }
      : startProgress(`move ${view.instance} ${view.from} -> ${view.to}`, total ? { total } : {});
    const deadline = Date.now() + timeoutMs;
    try {
      while (view.state !== 'done' && view.state !== 'failed') {
        if (Date.now() > deadline)
          throw new SfError(ErrorCode.Timeout, `move ${view.id} is still ${view.state} (see sf moves ${name})`);
        await new Promise((r) => setTimeout(r, 250));
        view = await client.request<MoveView>('GET', `/v3/moves/${encodeURIComponent(view.id)}`);
        progress.update(moveStatus(view), total ? Math.min(view.bytes, total) : undefined);
      }
    } finally {
      progress.stop();
    }
    if (view.state === 'failed') throw new SfError(ErrorCode.TransferFailed, `move failed: ${view.error ?? 'unknown'}`);
  }
  printResult(flags.json, view, () =>
    view.state === 'done'
      ? `${view.role} ${view.instance} moved from ${view.from} to ${view.to}${view.target_instance !== view.instance ? ` (now ${view.target_instance})` : ''}: ${(view.bytes / MB).toFixed(1)} MB, writes refused for ${view.write_window_ms} ms\n`
      : `move ${view.id} started: ${view.instance} from ${view.from} to ${view.to}\nfollow it with: sf moves ${name}\n`,
  );
}

async function listMoves(name: string | undefined, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const query = name ? `?service=${encodeURIComponent(name)}` : '';
  const { resources } = await client.request<{ resources: MoveView[] }>('GET', `/v3/moves${query}`);
  printResult(flags.json, resources, () =>
    resources.length
      ? resources
          .map(
            (m) =>
              `${m.id}  ${m.instance} ${m.from} -> ${m.to}  ${m.state}  ${moveStatus(m)}${m.error ? `  error: ${m.error}` : ''}`,
          )
          .join('\n') + '\n'
      : 'no moves\n',
  );
}

export function registerMoveCommands(program: Command): void {
  program
    .command('move <name>')
    .description("move a service instance's volume to another cell (the primary unless --instance)")
    .requiredOption('--to <cell>', 'the cell to move to')
    .option('--instance <id>', 'the instance to move (default: the primary)')
    .option(
      '--method <how>',
      'catch-up (a new replica on the target, then a role switch; default for redis and postgres) or copy (volume copy, stop, start)',
    )
    .option('--wait', 'follow the move with a progress bar until it is done')
    .option('--timeout <seconds>', 'how long --wait waits', '3600')
    .option('--json', 'machine-readable output')
    .action((name: string, flags: MoveFlags) => move(name, flags).catch(exitWithError));
  program
    .command('moves [name]')
    .description('list volume moves, newest first, with their progress')
    .option('--json', 'machine-readable output')
    .action((name: string | undefined, flags: { json?: boolean }) => listMoves(name, flags).catch(exitWithError));
}
