#!/usr/bin/env node
/**
 * `sf`: the one executable. Daemons (`router`, `control`, `cell`, `up`) and API clients
 * (`routes`, `services`, ...) are registered here from one module each.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { EXIT_USAGE, exitWithError } from './cli-support';
import { registerCellCommand } from './command-cell';
import { registerRouterCommand } from './command-router';
import { registerControlCommand } from './command-control';
import { registerEventsCommand } from './command-events';
import { registerRouteCommands } from './command-routes';
import { registerServiceCommands } from './command-services';
import { registerServiceKeyCommands } from './command-service-keys';
import { registerCellsCommand } from './command-cells';
import { registerVolumesCommand } from './command-volumes';
import { registerUpCommand } from './command-up';
import { registerFencingCommands } from './command-fencing';
import { registerTokenCommands } from './command-token';
import { registerPrometheusCommand } from './command-prometheus';
import { registerCaCommand } from './command-ca';
import { registerImagesCommand } from './command-images';
import { registerSnapshotCommands } from './command-snapshots';
import { registerMoveCommands } from './command-move';

const COMMANDS: Array<(program: Command) => void> = [
  registerRouterCommand,
  registerCellCommand,
  registerControlCommand,
  registerRouteCommands,
  registerEventsCommand,
  registerServiceCommands,
  registerServiceKeyCommands,
  registerCellsCommand,
  registerVolumesCommand,
  registerUpCommand,
  registerFencingCommands,
  registerTokenCommands,
  registerPrometheusCommand,
  registerCaCommand,
  registerImagesCommand,
  registerSnapshotCommands,
  registerMoveCommands,
];

export function buildProgram(): Command {
  const program = new Command('sf')
    .description('Service Foundry: run stateful services behind an L4 TCP router')
    .version(packageVersion())
    .showHelpAfterError('(run sf --help for usage)')
    .exitOverride();
  for (const register of COMMANDS) register(program);
  // A mistake in a subcommand's flags is best answered by that subcommand's help.
  for (const sub of program.commands) sub.showHelpAfterError(`(run sf ${sub.name()} --help for usage)`);
  return program;
}

async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; every parse problem is a usage error (exit 2).
      process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    }
    exitWithError(err);
  }
}

if (require.main === module) void main(process.argv);

/** The version from package.json, read at run time: dist/cli/sf.js sits two levels below it. */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}
