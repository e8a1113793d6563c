/**
 * `sf events`: follows the route event stream (SSE) until interrupted. When control disconnects it
 * for falling behind (a final `resync` event), it says so and exits 1: the events it missed are not
 * replayed, so the honest answer is to re-read `sf routes` and follow again.
 */
import type { Command } from 'commander';
import type { TcpRouteMapping } from '../control/state/tcp-route-types';
import { ApiClient, RESYNC_EVENT } from './api-client';
import { EXIT_FAILED, exitWithError } from './cli-support';

interface EventsFlags {
  json?: boolean;
}

/**
 * One event per line. The tag is printed whole: control's tags are names (`service:cache`), and a
 * random guid is only 36 characters. The backend id tells apart two backends on one address.
 */
export function humanLine(type: string, r: TcpRouteMapping, at = new Date()): string {
  const tag = `${r.modification_tag.guid}/${r.modification_tag.index}`;
  return `${at.toISOString()}  ${type.padEnd(6)}  port ${r.port}  -> ${r.backend_id} (${r.backend_ip}:${r.backend_port})  ${r.role} epoch ${r.epoch} ${r.state}  tag ${tag}\n`;
}

async function followEvents(flags: EventsFlags): Promise<void> {
  const client = await ApiClient.fromEnv();
  const abort = new AbortController();
  let resync = false;
  process.once('SIGINT', () => abort.abort());
  process.once('SIGTERM', () => abort.abort());
  await client.stream(
    '/routing/v1/tcp_routes/events',
    (ev) => {
      if (ev.event === RESYNC_EVENT) {
        resync = true;
        return;
      }
      if (ev.event !== 'Upsert' && ev.event !== 'Delete') return;
      const route = JSON.parse(ev.data) as TcpRouteMapping;
      process.stdout.write(flags.json ? `${JSON.stringify({ type: ev.event, route })}\n` : humanLine(ev.event, route));
    },
    abort.signal,
  );
  if (resync) {
    process.stderr.write(
      'sf: control ended the event stream because this client fell behind; events may be missing, re-read `sf routes` and run `sf events` again\n',
    );
    process.exit(EXIT_FAILED);
  }
  if (!abort.signal.aborted) {
    process.stderr.write('sf: the event stream ended (control stopped?)\n');
    process.exit(EXIT_FAILED);
  }
}

export function registerEventsCommand(program: Command): void {
  program
    .command('events')
    .description('follow route events (Upsert/Delete) as they happen')
    .option('--json', 'one JSON object per line')
    .action((flags: EventsFlags) => followEvents(flags).catch(exitWithError));
}
