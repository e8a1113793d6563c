/** `sf events`: follows the route event stream (SSE) until interrupted. */
import type { Command } from 'commander';
import type { TcpRouteMapping } from '../control/state/tcp-route-types';
import { ApiClient } from './api-client';
import { EXIT_FAILED, exitWithError } from './cli-support';

interface EventsFlags {
  json?: boolean;
}

function humanLine(type: string, r: TcpRouteMapping): string {
  const tag = `${r.modification_tag.guid.slice(0, 8)}/${r.modification_tag.index}`;
  return `${new Date().toISOString()}  ${type.padEnd(6)}  port ${r.port}  -> ${r.backend_ip}:${r.backend_port}  ${r.role} epoch ${r.epoch} ${r.state}  tag ${tag}\n`;
}

async function followEvents(flags: EventsFlags): Promise<void> {
  const client = await ApiClient.fromEnv();
  const abort = new AbortController();
  process.once('SIGINT', () => abort.abort());
  process.once('SIGTERM', () => abort.abort());
  await client.stream(
    '/routing/v1/tcp_routes/events',
    (ev) => {
      const route = JSON.parse(ev.data) as TcpRouteMapping;
      process.stdout.write(flags.json ? `${JSON.stringify({ type: ev.event, route })}\n` : humanLine(ev.event, route));
    },
    abort.signal,
  );
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
