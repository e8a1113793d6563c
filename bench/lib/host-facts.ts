/**
 * What a reader needs to compare two runs of a bench from different hosts: CPUs, kernel and how an
 * idle CPU waits. The last matters to the connection-rate rows: a proxy thread that sleeps between
 * bursts lets its CPU go idle, and a virtual CPU that halts at once (guest halt-polling off) costs a
 * round trip through the hypervisor on every wake-up that a busier proxy never pays
 * (docs/benchmarks.md, "Round eleven").
 */
import { readFileSync } from 'node:fs';
import { arch, cpus, release } from 'node:os';

export interface CpuIdleFacts {
  /** cpuidle driver (`haltpoll` in a KVM guest, `intel_idle`, `acpi_idle`), undefined without cpuidle. */
  driver?: string;
  governor?: string;
  /** The haltpoll driver's poll before halting, ns; 0 means an idle virtual CPU halts at once. */
  guestHaltPollNs?: number;
}

export interface HostFacts {
  cpus: number;
  cpuModel?: string;
  kernel: string;
  arch: string;
  cpuIdle: CpuIdleFacts;
}

function readTrimmed(path: string): string | undefined {
  try {
    const text = readFileSync(path, 'utf8').trim();
    return text === '' ? undefined : text;
  } catch {
    return undefined;
  }
}

export function cpuIdleFacts(): CpuIdleFacts {
  const driver = readTrimmed('/sys/devices/system/cpu/cpuidle/current_driver');
  const governor = readTrimmed('/sys/devices/system/cpu/cpuidle/current_governor');
  const pollNs = readTrimmed('/sys/module/haltpoll/parameters/guest_halt_poll_ns');
  const guestHaltPollNs = driver === 'haltpoll' && pollNs !== undefined ? Number(pollNs) : undefined;
  return { driver, governor, guestHaltPollNs };
}

export function hostFacts(): HostFacts {
  return { cpus: cpus().length, cpuModel: cpus()[0]?.model, kernel: release(), arch: arch(), cpuIdle: cpuIdleFacts() };
}

/** One line for a report's header: "cpuidle haltpoll, guest halt-poll 0 ns". */
export function describeCpuIdle(facts: CpuIdleFacts): string {
  if (facts.driver === undefined) return 'no cpuidle driver';
  const poll = facts.guestHaltPollNs === undefined ? '' : `, guest halt-poll ${facts.guestHaltPollNs} ns`;
  return `cpuidle ${facts.driver}${poll}`;
}
