import { expect } from 'chai';
import { FlagError, parseFaultFlags } from '../../../bench/lib/fault-flags';

/** The fault checker's flags: each platform gets the kinds that can run on it, and only those. */
describe('fault checker flags', () => {
  const names = (argv: string[]): string[] => parseFaultFlags(argv, 1).kinds.map((k) => k.name);
  const refusal = (argv: string[]): string => {
    try {
      parseFaultFlags(argv, 1);
    } catch (err) {
      expect(err).to.be.instanceOf(FlagError);
      return (err as Error).message;
    }
    throw new Error(`accepted: ${argv.join(' ')}`);
  };

  it('runs the processes platform by default, without the kinds that need sf up', () => {
    const flags = parseFaultFlags([], 1);
    expect(flags.platform).to.equal('processes');
    expect(names([])).to.include('platform-restart').and.not.include('sf-up-restart');
    // Opt-in kinds stay out of the default schedule.
    expect(names([])).to.not.include('cell-partition');
  });

  it('gives --platform sf-up the restart of sf up instead of the harness playing it', () => {
    const kinds = names(['--platform', 'sf-up']);
    expect(kinds).to.include('sf-up-restart');
    expect(kinds).to.include.members(['cell-kill', 'control-restart', 'router-restart', 'state-redis-restart']);
    expect(kinds).to.not.include('platform-restart');
    expect(kinds).to.not.include('cell-partition');
  });

  it('refuses a kind that cannot run on the chosen platform, saying why', () => {
    expect(refusal(['--platform', 'sf-up', '--kinds', 'engine-kill,cell-partition'])).to.match(
      /cell-partition.*--platform sf-up.*network namespace/,
    );
    expect(refusal(['--platform', 'sf-up', '--kinds', 'platform-restart'])).to.match(/platform-restart.*sf-up-restart/);
    expect(refusal(['--kinds', 'sf-up-restart'])).to.match(/sf-up-restart.*--platform processes/);
    expect(names(['--platform', 'sf-up', '--kinds', 'sf-up-restart,engine-kill'])).to.deep.equal([
      'sf-up-restart',
      'engine-kill',
    ]);
  });

  it('refuses an unknown platform, kind or value naming the flag', () => {
    expect(refusal(['--platform', 'docker'])).to.match(/^--platform: unknown platform 'docker' \(processes, sf-up\)/);
    expect(refusal(['--kinds', 'nosuch'])).to.match(/^--kinds: unknown fault kind 'nosuch'/);
    expect(refusal(['--faults', '0'])).to.match(/^--faults/);
    expect(refusal(['--platform'])).to.match(/--platform needs a value/);
    expect(refusal(['--engines', 'mysql'])).to.match(/^--engines/);
  });
});
