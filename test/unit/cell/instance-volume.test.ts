import { expect } from 'chai';
import { ErrorCode } from '../../../common/errors';
import { admitStart, checkEpoch, listVolumes, readMeta, recordPromotion } from '../../../cell/instance-volume';
import { parsePortRange } from '../../../cell/port-allocator';
import { spec, tempCellDir } from '../../helpers/cell-harness';

describe('instance-volume', () => {
  describe('checkEpoch', () => {
    it('refuses a primary older than the recorded epoch and lets replicas and newer primaries pass', async () => {
      const cell = await tempCellDir();
      try {
        const { meta } = await admitStart(
          cell.dir,
          spec({ instanceId: 'x', engine: 'redis', epoch: 7 }),
          'process',
          20000,
        );
        expect(() => checkEpoch(meta, spec({ instanceId: 'x', engine: 'redis', epoch: 6 })))
          .to.throw()
          .with.property('code', ErrorCode.StaleEpoch);
        expect(() =>
          checkEpoch(
            meta,
            spec({ instanceId: 'x', engine: 'redis', epoch: 6, role: 'replica', replicaOf: { host: 'h', port: 1 } }),
          ),
        ).not.to.throw();
        expect(() => checkEpoch(meta, spec({ instanceId: 'x', engine: 'redis', epoch: 7 }))).not.to.throw();
      } finally {
        await cell.remove();
      }
    });
  });

  describe('admitStart', () => {
    it('keeps the highest epoch across starts and promotions, on disk', async () => {
      const cell = await tempCellDir();
      try {
        const { paths } = await admitStart(
          cell.dir,
          spec({ instanceId: 'y', engine: 'redis', epoch: 3, role: 'replica', replicaOf: { host: 'h', port: 1 } }),
          'process',
          null,
        );
        await admitStart(
          cell.dir,
          spec({ instanceId: 'y', engine: 'redis', epoch: 1, role: 'replica', replicaOf: { host: 'h', port: 1 } }),
          'process',
          null,
        );
        expect((await readMeta(paths))?.highestEpoch).to.equal(3);
        await recordPromotion(cell.dir, 'y', 9);
        const meta = await readMeta(paths);
        expect(meta).to.include({ role: 'primary', highestEpoch: 9 });
        expect((await listVolumes(cell.dir)).map((v) => v.meta.instanceId)).to.deep.equal(['y']);
        const err = await admitStart(
          cell.dir,
          spec({ instanceId: 'y', engine: 'redis', epoch: 8 }),
          'process',
          null,
        ).catch((e: unknown) => e);
        expect((err as { code: string }).code).to.equal(ErrorCode.StaleEpoch);
      } finally {
        await cell.remove();
      }
    });
  });

  describe('parsePortRange', () => {
    it('parses FROM-TO and names the field when invalid', () => {
      expect(parsePortRange('20000-20999')).to.deep.equal({ from: 20000, to: 20999 });
      expect(() => parsePortRange('9-1'))
        .to.throw()
        .with.property('field', 'portRange');
    });
  });
});
