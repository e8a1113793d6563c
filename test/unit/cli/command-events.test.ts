import { expect } from 'chai';
import { humanLine } from '../../../cli/command-events';
import type { TcpRouteMapping } from '../../../control';

describe('sf events', function () {
  describe('humanLine', function () {
    it('prints the whole modification tag and the backend id', function () {
      const route = {
        router_group_guid: 'g',
        port: 16001,
        backend_ip: '127.0.0.1',
        backend_port: 20001,
        backend_id: 'cache-1',
        ttl: null,
        modification_tag: { guid: 'service:cache', index: 7 },
        expires_at: null,
        role: 'primary',
        weight: 1,
        epoch: 3,
        state: 'active',
      } as TcpRouteMapping;
      expect(humanLine('Upsert', route, new Date(0))).to.equal(
        '1970-01-01T00:00:00.000Z  Upsert  port 16001  -> cache-1 (127.0.0.1:20001)  primary epoch 3 active  tag service:cache/7\n',
      );
    });
  });
});
