import { expect } from 'chai';
import {
  runPlacementAuction,
  type CellCandidate,
  type PlacementRequest,
} from '../../../control/placement/placement-auction';
import { isSfError } from '../../../common/errors';

const cell = (name: string, zone: string, over: Partial<CellCandidate> = {}): CellCandidate => ({
  name,
  zone,
  alive: true,
  capacityMb: 1000,
  usedMb: 0,
  engines: ['redis', 'postgres', 'tcp'],
  ...over,
});

const request = (slots: number, over: Partial<PlacementRequest> = {}): PlacementRequest => ({
  service: 'svc',
  engine: 'redis',
  sizeMb: 100,
  slots: Array.from({ length: slots }, (_, i) => ({ instanceId: `svc-${i}` })),
  occupied: [],
  ...over,
});

function placementError(fn: () => unknown): Error & { code: string } {
  try {
    fn();
  } catch (err) {
    if (isSfError(err)) return err;
    throw err;
  }
  throw new Error('expected a placement error');
}

describe('runPlacementAuction', () => {
  it('never puts two instances of one service on the same cell', () => {
    const out = runPlacementAuction(request(3), [cell('a', 'z1'), cell('b', 'z1'), cell('c', 'z1')]);
    expect(new Set(out.map((d) => d.cell)).size).to.equal(3);
  });

  it('spreads instances across zones before filling a zone', () => {
    const out = runPlacementAuction(request(2), [
      cell('a1', 'z1'),
      cell('a2', 'z1', { usedMb: 0 }),
      cell('b1', 'z2', { usedMb: 800 }),
    ]);
    expect(out.map((d) => d.zone).sort()).to.deep.equal(['z1', 'z2']);
  });

  it('prefers the cell with more free capacity within a zone', () => {
    const out = runPlacementAuction(request(1), [cell('full', 'z1', { usedMb: 800 }), cell('empty', 'z1')]);
    expect(out[0].cell).to.equal('empty');
  });

  it('prefers the cell that already holds the instance volume', () => {
    const out = runPlacementAuction(request(1), [
      cell('empty', 'z1'),
      cell('hasvol', 'z1', { usedMb: 500, volumes: ['svc-0'] }),
    ]);
    expect(out[0].cell).to.equal('hasvol');
  });

  it('counts cells already occupied by the service', () => {
    const out = runPlacementAuction(request(1, { occupied: [{ cell: 'a', zone: 'z1' }] }), [
      cell('a', 'z1'),
      cell('b', 'z1'),
      cell('c', 'z2'),
    ]);
    expect(out[0].cell).to.equal('c');
  });

  it('skips dead cells, cells without the engine and cells without room', () => {
    const out = runPlacementAuction(request(1), [
      cell('dead', 'z1', { alive: false }),
      cell('noengine', 'z2', { engines: ['tcp'] }),
      cell('full', 'z3', { usedMb: 950 }),
      cell('ok', 'z1'),
    ]);
    expect(out[0].cell).to.equal('ok');
  });

  it('fails with SF_ERR_PLACEMENT_UNSATISFIABLE explaining each cell', () => {
    const err = placementError(() =>
      runPlacementAuction(request(2), [
        cell('a', 'z1'),
        cell('dead', 'z2', { alive: false }),
        cell('small', 'z3', { capacityMb: 50 }),
      ]),
    );
    expect(err.code).to.equal('SF_ERR_PLACEMENT_UNSATISFIABLE');
    expect(err.message).to.match(/needs 2 cells/);
    expect(err.message).to.match(/dead: not alive/);
    expect(err.message).to.match(/small: not enough free capacity/);
    expect(err.message).to.match(/a: already runs an instance/);
  });

  it('fails clearly when no cells are registered', () => {
    expect(placementError(() => runPlacementAuction(request(1), [])).message).to.match(/no cells are registered/);
  });

  it('is deterministic on ties', () => {
    const cells = [cell('b', 'z1'), cell('a', 'z2')];
    expect(runPlacementAuction(request(1), cells)[0].cell).to.equal('a');
  });
  it('places a service with sidecars only on cells that can run them, and says which cannot', () => {
    const cells = [
      cell('a', 'z1', { sidecars: [] }),
      cell('b', 'z2', { sidecars: ['redis-exporter'] }),
      cell('c', 'z3', { sidecars: ['redis-exporter', 'postgres-exporter'] }),
    ];
    const out = runPlacementAuction(request(2, { sidecars: ['redis-exporter'] }), cells);
    expect(out.map((d) => d.cell).sort()).to.deep.equal(['b', 'c']);
    const err = placementError(() => runPlacementAuction(request(3, { sidecars: ['redis-exporter'] }), cells));
    expect(err.code).to.equal('SF_ERR_PLACEMENT_UNSATISFIABLE');
    expect(err.message).to.contain('a: sidecar binary not installed');
    // A docker cell runs sidecars from the engine's image, whatever the host has installed.
    const docker = cells.map((c) => ({ ...c, executors: ['process', 'docker'] as const }));
    const inContainers = runPlacementAuction(request(3, { sidecars: ['redis-exporter'], executor: 'docker' }), docker);
    expect(inContainers).to.have.length(3);
  });
});
