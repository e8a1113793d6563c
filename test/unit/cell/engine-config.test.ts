import { expect } from 'chai';
import { defaultListenBacklog } from '../../../common/listen-backlog';
import type { EngineContext } from '../../../cell/engine';
import { lsnToValue, renderPgHba, renderPostgresConfig } from '../../../cell/engine-postgres';
import { parseInfo, renderRedisConfig } from '../../../cell/engine-redis';
import { expandPlaceholders } from '../../../cell/engine-tcp';
import { spec } from '../../helpers/cell-harness';

function ctx(input: Parameters<typeof spec>[0]): EngineContext {
  return {
    spec: spec(input),
    dataDir: '/v/data',
    volumeDir: '/v',
    port: 20001,
    listenHost: '127.0.0.1',
    advertiseHost: '10.0.0.5',
  };
}

describe('engine configuration', () => {
  describe('renderRedisConfig', () => {
    it('maps sync durability with replicas to appendfsync always and min-replicas-to-write 1', () => {
      const conf = renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis', durability: 'sync', replicas: 2 }));
      expect(conf).to.contain('port 20001\n').and.contain('dir /v/data\n').and.contain('appendonly yes\n');
      expect(conf).to.contain('appendfsync always\n').and.contain('min-replicas-to-write 1\n');
      expect(conf).to.contain('replica-announce-ip 10.0.0.5\n');
      expect(conf).to.contain(`tcp-backlog ${defaultListenBacklog()}\n`);
      expect(conf).not.to.contain('replicaof');
    });

    it('maps async to everysec, and sync without replicas never blocks writes', () => {
      expect(renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis', durability: 'async', replicas: 1 })))
        .to.contain('appendfsync everysec')
        .and.not.contain('min-replicas');
      expect(
        renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis', durability: 'sync', replicas: 0 })),
      ).not.to.contain('min-replicas');
    });

    it('follows replicaOf for a replica', () => {
      const conf = renderRedisConfig(
        ctx({ instanceId: 'r', engine: 'redis', role: 'replica', replicaOf: { host: '10.0.0.9', port: 20000 } }),
      );
      expect(conf).to.contain('replicaof 10.0.0.9 20000\n');
    });
  });

  describe('renderRedisConfig with TLS', () => {
    it('serves TLS only on the instance port with the volume copies of the cell certificate, and replicates over TLS', () => {
      const conf = renderRedisConfig(
        ctx({ instanceId: 'r', engine: 'redis', role: 'replica', replicaOf: { host: '10.0.0.9', port: 20000 } }),
        undefined,
        true,
      );
      expect(conf).to.contain('port 0\n').and.contain('tls-port 20001\n').and.not.contain('port 20001\n#');
      expect(conf.match(/^port /gm)).to.have.length(1);
      expect(conf)
        .to.contain('tls-cert-file /v/tls/server.crt\n')
        .and.contain('tls-key-file /v/tls/server.key\n')
        .and.contain('tls-ca-cert-file /v/tls/ca.crt\n')
        .and.contain('tls-auth-clients yes\n')
        .and.contain('tls-replication yes\n')
        .and.contain('replicaof 10.0.0.9 20000\n');
    });

    it('keeps the plaintext port without TLS', () => {
      const conf = renderRedisConfig(ctx({ instanceId: 'r', engine: 'redis' }));
      expect(conf).to.contain('port 20001\n').and.not.contain('tls-');
    });
  });

  describe('parseInfo', () => {
    it('reads INFO fields and skips section headers', () => {
      expect(parseInfo('# Replication\r\nrole:master\r\nmaster_repl_offset:42\r\n')).to.deep.equal({
        role: 'master',
        master_repl_offset: '42',
      });
    });
  });

  describe('renderPostgresConfig', () => {
    it('sets synchronous commit and any-standby for sync with replicas', () => {
      const conf = renderPostgresConfig(
        ctx({ instanceId: 'p', engine: 'postgres', durability: 'sync', replicas: 1 }),
        'postgres',
      );
      expect(conf)
        .to.contain('port = 20001\n')
        .and.contain("listen_addresses = '127.0.0.1'")
        .and.contain('wal_level = replica')
        .and.contain('hot_standby = on');
      expect(conf).to.contain('synchronous_commit = on\n').and.contain("synchronous_standby_names = '*'\n");
    });

    it('uses local commit for async and names the primary for a replica', () => {
      const conf = renderPostgresConfig(
        ctx({ instanceId: 'p-1', engine: 'postgres', role: 'replica', replicaOf: { host: 'h', port: 5 } }),
        'postgres',
      );
      expect(conf).to.contain('synchronous_commit = local\n').and.contain("synchronous_standby_names = ''\n");
      expect(conf).to.contain("primary_conninfo = 'host=h port=5 user=postgres application_name=p-1'");
    });

    it("verifies a primary that presents its service's certificate by the service name at the primary's address", () => {
      const conf = renderPostgresConfig(
        ctx({ instanceId: 'p-1', engine: 'postgres', role: 'replica', replicaOf: { host: '10.0.0.9', port: 5 } }),
        'postgres',
        undefined,
        {},
        true,
        { serverName: 'db', hostaddr: '10.0.0.9' },
      );
      expect(conf).to.contain('ssl = on\n').and.contain('host=db port=5 ');
      // The replica presents its own certificate: the primary requires one over TLS.
      expect(conf).to.match(
        /primary_conninfo = '[^']*sslmode=verify-full sslrootcert=\/v\/tls\/ca\.crt sslcert=\/v\/tls\/server\.crt sslkey=\/v\/tls\/server\.key hostaddr=10\.0\.0\.9'/,
      );
      expect(conf).to.contain("ssl_ca_file = '/v/tls/ca.crt'\n");
    });
  });

  describe('renderPgHba', () => {
    it('trusts loopback and the given networks for SQL and replication', () => {
      const hba = renderPgHba(['10.99.0.0/16']);
      expect(hba).to.contain('host all all 127.0.0.1/32 trust').and.contain('host replication all 10.99.0.0/16 trust');
    });

    const creds = {
      admin: { username: 'sf_admin', password: 'a' },
      replication: { username: 'sf_repl', password: 'r' },
      users: [],
    } as unknown as Parameters<typeof renderPgHba>[1];
    const lines = (hba: string): string[] => hba.split('\n').filter((l) => l && !l.startsWith('#'));

    it('without TLS: a password on every network, plaintext allowed', () => {
      expect(lines(renderPgHba(['10.99.0.0/16'], creds))).to.deep.equal([
        'host all all 127.0.0.1/32 scram-sha-256',
        'host replication sf_repl 127.0.0.1/32 scram-sha-256',
        'host all all ::1/128 scram-sha-256',
        'host replication sf_repl ::1/128 scram-sha-256',
        'host all all 10.99.0.0/16 scram-sha-256',
        'host replication sf_repl 10.99.0.0/16 scram-sha-256',
      ]);
    });

    it("with the service's certificate: TLS with a platform client certificate from other networks, plaintext SQL on loopback only", () => {
      expect(lines(renderPgHba(['10.99.0.0/16'], creds, 'service'))).to.deep.equal([
        'hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca',
        'hostnossl all all 127.0.0.1/32 scram-sha-256',
        'hostssl replication sf_repl 127.0.0.1/32 scram-sha-256 clientcert=verify-ca',
        'hostssl all all ::1/128 scram-sha-256 clientcert=verify-ca',
        'hostnossl all all ::1/128 scram-sha-256',
        'hostssl replication sf_repl ::1/128 scram-sha-256 clientcert=verify-ca',
        'hostssl all all 10.99.0.0/16 scram-sha-256 clientcert=verify-ca',
        'hostssl replication sf_repl 10.99.0.0/16 scram-sha-256 clientcert=verify-ca',
      ]);
    });

    it('with an optional policy: plaintext SQL from the trusted networks too, for the plaintext leg of plaintext clients', () => {
      const hba = lines(renderPgHba(['10.99.0.0/16'], creds, 'service-optional'));
      expect(hba).to.include('hostnossl all all 10.99.0.0/16 scram-sha-256');
      expect(hba).to.include('hostssl all all 10.99.0.0/16 scram-sha-256 clientcert=verify-ca');
      expect(hba).to.include('hostssl replication sf_repl 10.99.0.0/16 scram-sha-256 clientcert=verify-ca');
      expect(hba.filter((l) => l.startsWith('host ') || l.startsWith('hostnossl replication'))).to.deep.equal([]);
    });

    it("with the cell's certificate (a service without TLS): plaintext SQL from the trusted networks too, TLS with a client certificate", () => {
      const hba = lines(renderPgHba(['10.99.0.0/16'], creds, 'cell'));
      expect(hba).to.include('hostnossl all all 10.99.0.0/16 scram-sha-256');
      expect(hba).to.include('hostssl all all 10.99.0.0/16 scram-sha-256 clientcert=verify-ca');
      expect(hba).to.include('hostssl replication sf_repl 10.99.0.0/16 scram-sha-256 clientcert=verify-ca');
      expect(hba.filter((l) => l.startsWith('host '))).to.deep.equal([]);
    });
  });

  describe('lsnToValue', () => {
    it('turns an LSN into a comparable decimal', () => {
      expect(lsnToValue('0/3000060')).to.equal(String(0x3000060));
      expect(lsnToValue('1/0')).to.equal(String(2 ** 32));
      expect(BigInt(lsnToValue('16/B374D848')) > BigInt(lsnToValue('16/B374D847'))).to.equal(true);
    });
  });

  describe('expandPlaceholders', () => {
    it('fills {port}, {host} and {dataDir}', () => {
      expect(
        expandPlaceholders('--listen={host}:{port} --dir={dataDir}', ctx({ instanceId: 't', engine: 'tcp' })),
      ).to.equal('--listen=127.0.0.1:20001 --dir=/v/data');
    });
  });
});
