/**
 * `sf fence NAME`, `sf unfence NAME`, `sf failover NAME [--to INSTANCE]` and `sf fencing NAME`
 * (the history): clients of the fencing actions under `/v3/service_instances/:name` (docs/fencing.md).
 * Exit codes as everywhere: 0 ok, 1 the operation failed, 2 usage or invalid input.
 */
import type { Command } from 'commander';
import type { FencingStepView as FencingStep } from '../control/api/history-views';
import type { ServiceView } from '../control/services';
import { ApiClient } from './api-client';
import { ErrorCode, httpStatusFor, isSfError } from '../common/errors';
import { UsageError, exitWithError } from './cli-support';
import { formatTable, printResult } from './output-table';

interface ActionResponse {
  operation: string;
  steps: FencingStep[];
  service: ServiceView;
}

function stepsTable(steps: FencingStep[]): string {
  return formatTable(
    ['TIME', 'STEP', 'OUTCOME', 'INSTANCE', 'EPOCH', 'TRIGGER', 'MESSAGE'],
    steps.map((s) => [new Date(s.at).toISOString(), s.step, s.outcome, s.instance_id, s.epoch, s.trigger, s.message]),
  );
}

function actionSummary(res: ActionResponse): string {
  const primary = res.service.instances.find((i) => i.role === 'primary');
  return `${stepsTable(res.steps)}\nservice ${res.service.name}: epoch ${res.service.epoch}, primary ${primary ? `${primary.id}@${primary.cell}` : 'none'}, status ${res.service.status}\n`;
}

function path(name: string, suffix: string): string {
  return `/v3/service_instances/${encodeURIComponent(name)}${suffix}`;
}

async function action(
  name: string,
  what: 'fence' | 'unfence' | 'failover',
  flags: { json?: boolean; to?: string },
): Promise<void> {
  const client = await ApiClient.fromEnv();
  const res = await client.request<ActionResponse>(
    'POST',
    path(name, `/actions/${what}`),
    what === 'failover' ? (flags.to ? { to: flags.to } : {}) : {},
  );
  printResult(flags.json, res, () => actionSummary(res));
}

async function history(name: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const { resources } = await client.request<{ resources: FencingStep[] }>('GET', path(name, '/fencing'));
  printResult(flags.json, resources, () =>
    resources.length ? stepsTable([...resources].reverse()) : `no fencing history for ${name}\n`,
  );
}

/**
 * A refused action (unknown service, bad `--to`, nothing to unfence...) is the caller's to fix:
 * control answered 4xx and did nothing, so it exits 2 like any invalid input.
 */
function exitRefusedOrFailed(err: unknown): never {
  if (isSfError(err)) {
    const status = httpStatusFor(err);
    // A catch-up timeout is a switchover that ran and was abandoned: a failed operation.
    const ran = err.code === ErrorCode.CatchUpTimeout;
    const auth = err.code === ErrorCode.Unauthorized || err.code === ErrorCode.Forbidden;
    if (status >= 400 && status < 500 && !ran && !auth) return exitWithError(new UsageError(err.message));
  }
  return exitWithError(err);
}

const run =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A) =>
    fn(...args).catch(exitRefusedOrFailed);

export function registerFencingCommands(program: Command): void {
  program
    .command('fence')
    .description(
      "fence a service's primary (STONITH): route fence, SIGKILL, lease floor, network fence; promotes at once under fencing.policy auto",
    )
    .argument('<name>', 'service name')
    .option('--json', 'machine-readable output')
    .action(run((name: string, flags: { json?: boolean }) => action(name, 'fence', flags)));
  program
    .command('unfence')
    .description(
      'lift a network fence; a fenced old primary rejoins as a replica, or stays fenced while it is still the primary',
    )
    .argument('<name>', 'service name')
    .option('--json', 'machine-readable output')
    .action(run((name: string, flags: { json?: boolean }) => action(name, 'unfence', flags)));
  program
    .command('failover')
    .description(
      'promote a replica: after a fence (manual policy), or a planned switchover without data loss when the primary is healthy',
    )
    .argument('<name>', 'service name')
    .option('--to <instance>', 'the replica to promote (default: the most up-to-date)')
    .option('--json', 'machine-readable output')
    .action(run((name: string, flags: { json?: boolean; to?: string }) => action(name, 'failover', flags)));
  program
    .command('fencing')
    .description('fencing history of a service, oldest first (like stonith_admin --history)')
    .argument('<name>', 'service name')
    .option('--json', 'machine-readable output (newest first)')
    .action(run(history));
}
