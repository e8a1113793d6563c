import { existsSync } from 'node:fs';
import { expect } from 'chai';
import { ErrorCode } from '../../../common/errors';
import { DockerExecutor } from '../../../cell/executor-docker';
import { spec, tempCellDir } from '../../helpers/cell-harness';

describe('DockerExecutor', () => {
  const socketPath = '/nonexistent/sf-test-docker.sock';

  describe('available', () => {
    it('reports unavailable with the reason when no daemon answers on the socket', async () => {
      const executor = new DockerExecutor({ dataDir: '/tmp', docker: { socketPath } });
      const availability = await executor.available();
      expect(availability.ok).to.equal(false);
      expect(availability.reason)
        .to.contain(socketPath)
        .and.to.match(/ENOENT|no Docker daemon/);
    });
  });

  describe('available (default socket)', () => {
    it('reports unavailable at /var/run/docker.sock on a host without a daemon', async function () {
      if (existsSync('/var/run/docker.sock') || process.env.DOCKER_HOST) {
        console.log('      skipped: this host has a Docker socket or DOCKER_HOST, so the default may be reachable');
        this.skip();
      }
      const availability = await new DockerExecutor({ dataDir: '/tmp' }).available();
      expect(availability).to.deep.include({ ok: false });
      expect(availability.reason).to.contain('/var/run/docker.sock');
    });
  });

  describe('start', () => {
    it('refuses with SF_ERR_EXECUTOR_UNAVAILABLE instead of pretending', async () => {
      const cell = await tempCellDir();
      try {
        const executor = new DockerExecutor({ dataDir: cell.dir, docker: { socketPath } });
        const err = await executor.start(spec({ instanceId: 'd-0', engine: 'redis' })).catch((e: unknown) => e);
        expect((err as { code: string }).code).to.equal(ErrorCode.ExecutorUnavailable);
        expect(executor.handles()).to.deep.equal([]);
      } finally {
        await cell.remove();
      }
    });
  });
});
