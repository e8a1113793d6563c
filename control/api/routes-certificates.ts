/**
 * `POST /v3/service_instances/:name/actions/rotate-certificate` (docs/tls.md, Rotating a
 * service's certificate): a new key and certificate for the service from the platform CA, at
 * once, for an operator who suspects the key leaked. They are written over the same files, which
 * the router (on its next handshake) and the engines (on their cell's next probe) load for new
 * connections while established ones keep their session. The service's event stream records the
 * rotation with the new certificate's fingerprint and expiry, never a key.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { ErrorCode, SfError } from '../../common';
import type { ServiceCertificates } from '../services/service-certificates';
import type { ServiceStore } from '../services/service-store';
import type { ServiceRecord } from '../services/service-types';
import type { HttpServer } from './http-server';

export interface CertificatesApiDeps {
  store: ServiceStore;
  /** Undefined when control has no platform CA (`sf control --ca-dir`). */
  certificates?: ServiceCertificates;
}

/** What the API answers: the new certificate's public facts. */
export interface RotatedCertificateView {
  service: string;
  /** SHA-256 of the new certificate (DER), as `openssl x509 -fingerprint -sha256` prints it. */
  fingerprint_sha256: string;
  serial: string;
  not_after: string;
  /** The instances that load it on their cell's next probe (their engines present the service's certificate). */
  engines: number;
}

export function registerCertificatesApi(server: HttpServer, deps: CertificatesApiDeps): void {
  server.route('post', '/v3/service_instances/:name/actions/rotate-certificate', 'write', async (ctx) => {
    const name = ctx.params.name;
    const current = await deps.store.get(name);
    if (!current) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
    if (!current.tls || current.tls === 'off')
      throw new SfError(
        ErrorCode.ActionRefused,
        `service '${name}' has tls 'off': it has no certificate to rotate (sf update-service ${name} --tls required turns TLS on)`,
        'tls',
      );
    if (!deps.certificates)
      throw new SfError(
        ErrorCode.ActionRefused,
        'this control has no platform CA to issue a certificate with: start it with --ca-dir (sf up does)',
        'tls',
      );
    const files = await deps.certificates.rotate(name);
    const cert = new X509Certificate(await readFile(files.certFile));
    const view: RotatedCertificateView = {
      service: name,
      fingerprint_sha256: cert.fingerprint256,
      serial: cert.serialNumber,
      not_after: files.notAfter.toISOString(),
      engines: current.tlsCertificate ? current.instances.length : 0,
    };
    await deps.store.change<ServiceRecord>(name, null, async (record) => {
      if (!record) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
      const events = [
        {
          type: 'certificate-rotated' as const,
          service: name,
          message: `certificate rotated: new key, sha256 ${view.fingerprint_sha256}, serial ${view.serial}, valid until ${view.not_after}`,
        },
      ];
      return { change: { record: { ...record, updatedAt: Date.now() }, extraOps: [], events }, result: record };
    });
    return { body: view };
  });
}
