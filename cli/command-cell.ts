/**
 * `sf cell`: runs the cell agent of this host (control/cell/cell-agent.ts); the body lives in
 * cell-main.ts and loads only when the command runs.
 */
import { Option, type Command } from 'commander';
import { DEFAULT_CELL_AGENT_OPTIONS } from '../cell/cell-agent-defaults';
import { exitWithError } from './cli-support';
import { withRedisCredentialsOption } from './redis-credentials-option';
import type { CellFlags } from './cell-main';

export function registerCellCommand(program: Command): void {
  withRedisCredentialsOption(program.command('cell'))
    .description('run the cell agent of this host: registers with control, runs and reports service instances')
    .option('--name <name>', 'cell name, unique in the platform')
    .option('--zone <zone>', 'failure zone; replicas of a service are spread across zones')
    .option('--capacity-mb <n>', 'volume capacity offered to placement, in MB')
    .option('--redis <url>', 'Redis URL of the control plane (default: SF_REDIS_URL or redis://127.0.0.1:6379)')
    .option(
      '--key-prefix <prefix>',
      'prefix of every Redis key; control, cells and routers of one installation use the same (default: SF_KEY_PREFIX or sf:)',
    )
    .option(
      '--data-dir <dir>',
      'where instance volumes live (default: /var/lib/service-foundry/cells/NAME as root, else ~/.service-foundry/cells/NAME)',
    )
    .option('--listen-host <host>', 'address instances bind to', DEFAULT_CELL_AGENT_OPTIONS.listenHost)
    .option('--advertise-host <host>', 'address routers and replicas use to reach instances (default: --listen-host)')
    .option(
      '--port-range <from-to>',
      'ports for instances',
      `${DEFAULT_CELL_AGENT_OPTIONS.portRange.from}-${DEFAULT_CELL_AGENT_OPTIONS.portRange.to}`,
    )
    .option(
      '--heartbeat-ms <ms>',
      'registration refresh interval; a failed beat is tried again a third of it later (default: half of --heartbeat-ttl-ms)',
    )
    .option(
      '--heartbeat-ttl-ms <ms>',
      'registration TTL: the cell counts as dead this long after its last heartbeat',
      String(DEFAULT_CELL_AGENT_OPTIONS.heartbeatTtlMs),
    )
    .option(
      '--desired-poll-ms <ms>',
      'read the desired state this often without a notification (every 2 s while the notify subscription is down)',
      String(DEFAULT_CELL_AGENT_OPTIONS.desiredPollMs),
    )
    .option(
      '--commit-check-timeout-ms <ms>',
      'a primary whose check write does not commit (sync: is not acknowledged) within this is reported degraded (default: 2000)',
    )
    .option(
      '--volume-check-ms <ms>',
      'interval between two disk-usage measurements (du) of every volume; a full one refuses writes',
      String(DEFAULT_CELL_AGENT_OPTIONS.volumeCheckMs),
    )
    .option(
      '--trust-cidr <cidr>',
      'network trusted by postgres besides loopback (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option(
      '--tcp-allow <file>',
      'an executable tcp instances may run (repeatable; default: any, creating tcp services needs an admin token)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .addOption(
      new Option(
        '--executor <kind>',
        'executor of instances whose service names none (docker: DOCKER_HOST or /var/run/docker.sock, images from sf images build)',
      ).choices(['process', 'docker']),
    )
    .option(
      '--metrics-listen <host:port>',
      'serve Prometheus /metrics and /health here, like the router admin endpoint; /metrics needs SF_API_TOKEN or the token file named after this address (default: off; keep it on loopback)',
    )
    .option(
      '--ca-dir <dir>',
      'the platform CA (ca.crt, ca.key): the cell gets a certificate from it and PostgreSQL instances serve and replicate over TLS (default: none)',
    )
    .option('--ca-cert <file>', "the operator's CA certificate (PEM) instead of one made in --ca-dir")
    .option('--ca-key <file>', "the operator's CA private key (PEM, mode 0600), with --ca-cert")
    .option(
      '--stop-instances-on-exit',
      'stop engines when the agent exits (default: leave them running for re-adoption)',
    )
    .action(async (flags: CellFlags) => {
      try {
        const { runCell } = await import('./cell-main');
        await runCell(flags);
      } catch (err) {
        exitWithError(err);
      }
    });
}
