import { expect } from 'chai';
import { parseSentinelUrl } from '../../../common/redis-connection';

describe('redis-connection', () => {
  describe('parseSentinelUrl', () => {
    it('leaves plain redis URLs alone', () => {
      expect(parseSentinelUrl('redis://127.0.0.1:6379')).to.equal(undefined);
    });

    it('reads sentinels, master name, password and db', () => {
      expect(
        parseSentinelUrl('redis-sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/sf-state?db=2'),
      ).to.deep.equal({
        sentinels: [
          { host: '10.0.0.1', port: 26379 },
          { host: '10.0.0.2', port: 26379 },
          { host: '::1', port: 26380 },
        ],
        name: 'sf-state',
        password: 's3cret',
        db: 2,
      });
    });

    it("reads the master's ACL user besides its password", () => {
      expect(parseSentinelUrl('redis-sentinel://control:p%40ss@10.0.0.1/sf-state')).to.include({
        username: 'control',
        password: 'p@ss',
      });
    });

    it('marks rediss-sentinel:// as TLS to Sentinels and master, and leaves rediss:// alone', () => {
      expect(parseSentinelUrl('rediss-sentinel://10.0.0.1:26379/sf-state')).to.include({ name: 'sf-state', tls: true });
      expect(parseSentinelUrl('redis-sentinel://10.0.0.1:26379/sf-state')).to.not.have.property('tls');
      expect(parseSentinelUrl('rediss://127.0.0.1:6380')).to.equal(undefined);
    });

    it('refuses a URL without a master name', () => {
      expect(() => parseSentinelUrl('redis-sentinel://10.0.0.1:26379')).to.throw(/master name/);
    });
  });
});
