/**
 * Validation of operator fencing actions before anything acts (a refused
 * `sf failover cache --to nosuch` had already route-fenced the primary and raised its lease
 * floor). `planAction` reads the service record and the cells' reports and either returns what
 * the action will do or throws a 4xx error; it has no effects, so a refused action leaves no trace
 * but its error. The coordinator runs it on fresh state right before the sequence starts.
 */
import { ErrorCode, SfError } from '../../common';
import type { CellSnapshot } from '../services/cell-directory';
import type { InstanceRecord, ServiceRecord } from '../services/service-types';

export type FencingAction = 'fence' | 'unfence' | 'failover';

export type ActionPlan =
  /** Steps 1-3 on the primary, then promotion under `fencing.policy: auto`. */
  | { kind: 'fence'; primary: InstanceRecord; promote: boolean }
  /** Lift network fences and let fenced non-primaries rejoin. */
  | { kind: 'unfence' }
  /** The primary is fenced already (manual policy, or a failed promotion): promote now. */
  | { kind: 'promote'; primary: InstanceRecord; target?: string }
  /** The primary is lost (cell dead, engine not running): fence it, then promote. */
  | { kind: 'failover'; primary: InstanceRecord; target?: string }
  /** The primary is healthy: a planned switchover without data loss. */
  | { kind: 'switchover'; primary: InstanceRecord; target?: string };

/**
 * Replicas that can be promoted now: running at their current generation on a live cell. A
 * replica a move is building (`moveOf`) counts only when it is named as the target: only the
 * move promotes it.
 */
export function eligibleReplicas(
  rec: ServiceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
  target?: string,
): InstanceRecord[] {
  return rec.instances.filter((i) => {
    const a = cells.get(i.cell)?.actual.get(i.id);
    return (
      i.role === 'replica' &&
      (!i.moveOf || i.id === target) &&
      !i.fenced &&
      i.specWritten &&
      cells.get(i.cell)?.alive === true &&
      a?.state === 'running' &&
      a.generation >= i.generation
    );
  });
}

/** True when the primary runs at its current generation on a live cell. */
function primaryRunning(primary: InstanceRecord, cells: ReadonlyMap<string, CellSnapshot>): boolean {
  const cell = cells.get(primary.cell);
  const a = cell?.actual.get(primary.id);
  return cell?.alive === true && a?.state === 'running' && a.generation >= primary.generation;
}

/** Checks `--to` (when given) and that something can be promoted; throws a 4xx error otherwise. */
function checkTarget(
  rec: ServiceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
  target: string | undefined,
  what: string,
): void {
  const eligible = eligibleReplicas(rec, cells, target);
  const names = eligible.map((i) => i.id).join(', ') || 'none';
  if (target !== undefined) {
    const inst = rec.instances.find((i) => i.id === target);
    if (!inst) {
      throw new SfError(
        ErrorCode.InvalidFailoverTarget,
        `${target} is not an instance of ${rec.name} (running replicas: ${names})`,
        'to',
      );
    }
    if (inst.role === 'primary') {
      throw new SfError(
        ErrorCode.InvalidFailoverTarget,
        `${target} is the primary of ${rec.name} already (running replicas: ${names})`,
        'to',
      );
    }
    if (!eligible.some((i) => i.id === target)) {
      const a = cells.get(inst.cell)?.actual.get(inst.id);
      const why = inst.fenced
        ? 'it is fenced'
        : cells.get(inst.cell)?.alive !== true
          ? `its cell ${inst.cell} is not alive`
          : `its state is ${a?.state ?? 'pending'}`;
      throw new SfError(
        ErrorCode.InvalidFailoverTarget,
        `${target} is not a running replica of ${rec.name}: ${why} (running replicas: ${names})`,
        'to',
      );
    }
    return;
  }
  if (eligible.length === 0) {
    throw new SfError(ErrorCode.NoPromotionCandidate, `${rec.name} has no running replica to ${what}`);
  }
}

/**
 * What `action` on `rec` will do, or a 4xx error. Never has an effect: everything the action
 * needs (a primary, a running replica, a valid `--to`) is checked here first.
 */
export function planAction(
  action: FencingAction,
  rec: ServiceRecord,
  cells: ReadonlyMap<string, CellSnapshot>,
  target?: string,
): ActionPlan {
  if (target !== undefined && action !== 'failover')
    throw new SfError(ErrorCode.InvalidFailoverTarget, `only failover takes a target`, 'to');
  if (rec.status === 'deleting') throw new SfError(ErrorCode.ActionRefused, `service ${rec.name} is being deleted`);
  const primary = rec.instances.find((i) => i.role === 'primary');

  if (action === 'unfence') {
    const fenced = rec.instances.filter((i) => i.fenced);
    if (fenced.length === 0)
      throw new SfError(ErrorCode.ActionRefused, `no instance of ${rec.name} is fenced; nothing to unfence`);
    const liftable = fenced.some((i) => i.role !== 'primary' || (i.fenced?.networkPeers?.length ?? 0) > 0);
    if (!liftable && primary?.fenced) {
      throw new SfError(
        ErrorCode.ActionRefused,
        `${primary.id} is fenced and still the primary of ${rec.name}; it never serves again with epoch ${primary.epoch}: promote a replica first with 'sf failover ${rec.name}'`,
      );
    }
    return { kind: 'unfence' };
  }

  if (!primary) throw new SfError(ErrorCode.NoPrimary, `service ${rec.name} has no primary`);

  if (action === 'fence') {
    if (primary.fenced?.complete) {
      throw new SfError(
        ErrorCode.ActionRefused,
        `${primary.id} is fenced already (epoch ${primary.fenced.epoch}); promote a replica with 'sf failover ${rec.name}'`,
      );
    }
    // Fencing the only writer with nothing to promote leaves the service without one: refuse
    // rather than strand it (a restart of `sf up` once ended there).
    checkTarget(rec, cells, undefined, `promote after fencing ${primary.id}, so fencing it would leave no writer`);
    return { kind: 'fence', primary, promote: rec.fencing.policy === 'auto' };
  }

  checkTarget(rec, cells, target, 'promote');
  if (primary.fenced) return { kind: 'promote', primary, target };
  if (!primaryRunning(primary, cells)) return { kind: 'failover', primary, target };
  return { kind: 'switchover', primary, target };
}
