import { expect } from 'chai';
import { prometheusConfig, sidecarTargets, type ScrapeTargets } from '../../../cli/command-prometheus';
import type { ServiceView } from '../../../control/services';

const base: ScrapeTargets = {
  control: '127.0.0.1:7600',
  tokenFile: '/t/admin',
  platformTokenFile: '/t/platform',
  routers: ['127.0.0.1:7601'],
  cells: [],
  scrapeInterval: '15s',
};

function service(name: string, tls: boolean[]): ServiceView {
  return {
    name,
    engine: 'redis',
    instances: tls.map((t, i) => ({
      id: `${name}-${i}`,
      host: '10.0.0.5',
      sidecars: [{ name: 'redis-exporter', port: 20_000 + i, ...(t ? { tls: true } : {}) }],
    })),
  } as unknown as ServiceView;
}

describe('sf prometheus-config', () => {
  it('scrapes plain HTTP exporters in sf-sidecar and HTTPS ones in sf-sidecar-tls, with the CA and client certificate', () => {
    const sidecars = sidecarTargets([service('a', [false]), service('b', [true, true])]);
    expect(sidecars.map((s) => [s.instance, s.tls])).to.deep.equal([
      ['a-0', false],
      ['b-0', true],
      ['b-1', true],
    ]);
    const yaml = prometheusConfig({
      ...base,
      sidecars,
      sidecarTls: { caFile: '/up/ca.pem', certFile: '/up/p.crt', keyFile: '/up/p.key' },
    });
    const plain = yaml.slice(yaml.indexOf('job_name: sf-sidecar\n'), yaml.indexOf('job_name: sf-sidecar-tls'));
    expect(plain).to.include('targets: ["10.0.0.5:20000"]').and.not.include('scheme: https');
    const tls = yaml.slice(yaml.indexOf('job_name: sf-sidecar-tls'));
    expect(tls).to.include(
      [
        '    scheme: https',
        '    tls_config:',
        '      ca_file: "/up/ca.pem"',
        '      cert_file: "/up/p.crt"',
        '      key_file: "/up/p.key"',
      ].join('\n'),
    );
    expect(tls).to.include('targets: ["10.0.0.5:20000"]').and.include('targets: ["10.0.0.5:20001"]');
    expect(tls).to.include('instance: "b-1"').and.not.include('instance: "a-0"');
  });

  it('has no sidecar job without sidecars, and no TLS job without HTTPS ones', () => {
    expect(prometheusConfig(base)).to.not.include('sf-sidecar');
    const yaml = prometheusConfig({ ...base, sidecars: sidecarTargets([service('a', [false])]) });
    expect(yaml).to.include('job_name: sf-sidecar\n').and.not.include('sf-sidecar-tls');
  });
});
