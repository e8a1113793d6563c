import { expect } from 'chai';
import {
  planVolumeDeletions,
  type CellVolumes,
  type VolumeTombstone,
} from '../../../control/convergence/volume-tombstones';

type Actual = CellVolumes['actual'] extends ReadonlyMap<string, infer A> ? A : never;

function cell(name: string, alive: boolean, instances: Array<Partial<Actual> & { instanceId: string }>): CellVolumes {
  return {
    name,
    alive,
    actual: new Map(
      instances.map((i) => [i.instanceId, { service: 'cache', state: 'stopped', volumePresent: true, ...i } as Actual]),
    ),
  };
}

function tomb(cellName: string, instanceId: string, over: Partial<VolumeTombstone> = {}): [string, VolumeTombstone] {
  return [
    `${cellName}/${instanceId}`,
    { cell: cellName, instanceId, service: 'cache', reason: 'replaced', at: 0, deleteAfter: 1_000, ...over },
  ];
}

describe('planVolumeDeletions', () => {
  it('never deletes a volume no tombstone names, even when no service owns it', () => {
    // The store lost its records (or a cell came back late): the volume is reported, not deleted.
    const plan = planVolumeDeletions([cell('c1', true, [{ instanceId: 'cache-1' }])], new Set(), new Map(), 10_000);
    expect(plan.deletes).to.deep.equal([]);
    expect(plan.unowned).to.deep.equal([{ cell: 'c1', instanceId: 'cache-1', service: 'cache' }]);
  });

  it('keeps a replaced replica until its retention has passed, then deletes it', () => {
    const cells = [cell('c1', true, [{ instanceId: 'cache-1' }])];
    const tombs = new Map([tomb('c1', 'cache-1', { deleteAfter: 5_000 })]);
    expect(planVolumeDeletions(cells, new Set(), tombs, 4_999).deletes).to.deep.equal([]);
    expect(planVolumeDeletions(cells, new Set(), tombs, 5_000).deletes.map((t) => t.instanceId)).to.deep.equal([
      'cache-1',
    ]);
  });

  it('does nothing for a volume on a dead cell, and keeps its tombstone', () => {
    const plan = planVolumeDeletions(
      [cell('c1', false, [{ instanceId: 'cache-1' }])],
      new Set(),
      new Map([tomb('c1', 'cache-1')]),
      10_000,
    );
    expect(plan).to.deep.equal({ deletes: [], cleared: [], unowned: [] });
  });

  it('never deletes an owned volume, and clears a tombstone a record re-adopted', () => {
    const plan = planVolumeDeletions(
      [cell('c1', true, [{ instanceId: 'cache-1' }])],
      new Set(['c1/cache-1']),
      new Map([tomb('c1', 'cache-1')]),
      10_000,
    );
    expect(plan.deletes).to.deep.equal([]);
    expect(plan.cleared).to.deep.equal(['c1/cache-1']);
  });

  it('waits until the instance is stopped before deleting', () => {
    const plan = planVolumeDeletions(
      [cell('c1', true, [{ instanceId: 'cache-1', state: 'running' }])],
      new Set(),
      new Map([tomb('c1', 'cache-1', { reason: 'service-deleted', deleteAfter: 0 })]),
      10_000,
    );
    expect(plan.deletes).to.deep.equal([]);
  });

  it('deletes a deleted service volume at once when its cell is back, and clears the tombstone after', () => {
    const tombs = new Map([tomb('c2', 'cache-3', { reason: 'service-deleted', deleteAfter: 0 })]);
    const before = planVolumeDeletions([cell('c2', true, [{ instanceId: 'cache-3' }])], new Set(), tombs, 1);
    expect(before.deletes.map((t) => t.instanceId)).to.deep.equal(['cache-3']);
    const after = planVolumeDeletions([cell('c2', true, [])], new Set(), tombs, 2);
    expect(after.deletes).to.deep.equal([]);
    expect(after.cleared).to.deep.equal(['c2/cache-3']);
  });
});
