import { expect } from 'chai';
import { publicRedisUrl } from '../../../control/api/public-redis-url';

describe('publicRedisUrl', function () {
  it('drops user-info and authenticating query parameters', function () {
    expect(publicRedisUrl('redis://:s3cret@127.0.0.1:7650')).to.equal('redis://127.0.0.1:7650');
    expect(publicRedisUrl('redis://control:s3cret@127.0.0.1:7650/2')).to.equal('redis://127.0.0.1:7650/2');
    expect(publicRedisUrl('rediss://u:p%40ss@db.example:6380?password=x&db=3')).to.equal(
      'rediss://db.example:6380?db=3',
    );
    expect(
      publicRedisUrl('redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster?db=1&sentinelPassword=y'),
    ).to.equal('redis-sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster?db=1');
  });

  it('keeps a URL without secrets as it is, and gives nothing for what is not a URL', function () {
    expect(publicRedisUrl('redis://127.0.0.1:6379')).to.equal('redis://127.0.0.1:6379');
    expect(publicRedisUrl('not a url :pw@x')).to.equal('');
  });
});
