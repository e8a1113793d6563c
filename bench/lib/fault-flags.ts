/**
 * The flags of bench/fault-schedule.ts, validated before anything starts: a bad value, an unknown
 * fault kind, or a kind that cannot run on the chosen platform is a `FlagError` naming the flag
 * (the program prints it and exits 2).
 */
import { defaultFaultKinds, faultKindsByName, type FaultKind } from './fault-kinds';
import { PLATFORM_MODES, type PlatformMode } from './fault-platform-base';
import type { EngineName } from './fault-writers';
import { FlagError } from './flag-error';

export interface FaultFlags {
  seed: number;
  faults: number;
  engines: EngineName[];
  /** The kinds asked for (`--kinds`), or the platform's default schedule. */
  kinds: FaultKind[];
  platform: PlatformMode;
  list: boolean;
  logDir: string;
  logLevel: string;
  recoveryBoundMs: number;
}

export { FlagError };

export function parseFaultFlags(argv: readonly string[], defaultSeed = Date.now() % 100_000): FaultFlags {
  let seed = defaultSeed;
  let faults = 10;
  let engines: string[] = ['redis', 'postgres'];
  let kindNames: string[] | undefined;
  let platform = 'processes';
  let list = false;
  let logDir = '';
  let logLevel = 'warn';
  let recoveryBoundMs = 10_000;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new FlagError(`${arg} needs a value`);
      return v;
    };
    if (arg === '--seed') seed = Number(value());
    else if (arg === '--faults') faults = Number(value());
    else if (arg === '--engines') engines = value().split(',');
    else if (arg === '--kinds') kindNames = value().split(',');
    else if (arg === '--platform') platform = value();
    else if (arg === '--list') list = true;
    else if (arg === '--log-dir') logDir = value();
    else if (arg === '--log-level') logLevel = value();
    else if (arg === '--recovery-bound-ms') recoveryBoundMs = Number(value());
    else throw new FlagError(`unknown flag ${arg}`);
  }
  if (!Number.isInteger(seed) || seed < 0) throw new FlagError('--seed must be a non-negative integer');
  if (!Number.isInteger(faults) || faults < 1 || faults > 1_000)
    throw new FlagError('--faults must be an integer 1-1000');
  if (!Number.isInteger(recoveryBoundMs) || recoveryBoundMs < 1)
    throw new FlagError('--recovery-bound-ms must be a positive integer');
  for (const e of engines)
    if (e !== 'redis' && e !== 'postgres') throw new FlagError(`--engines: unknown engine '${e}' (redis, postgres)`);
  if (!(PLATFORM_MODES as readonly string[]).includes(platform))
    throw new FlagError(`--platform: unknown platform '${platform}' (${PLATFORM_MODES.join(', ')})`);
  const mode = platform as PlatformMode;
  let kinds: FaultKind[];
  try {
    kinds = kindNames ? faultKindsByName(kindNames, mode) : defaultFaultKinds(mode);
  } catch (err) {
    throw new FlagError(`--kinds: ${(err as Error).message}`);
  }
  return {
    seed,
    faults,
    engines: engines as EngineName[],
    kinds,
    platform: mode,
    list,
    logDir,
    logLevel,
    recoveryBoundMs,
  };
}
