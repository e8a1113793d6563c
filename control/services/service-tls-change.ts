/**
 * Whether a running service's TLS policy may change (docs/tls.md, Changing the policy of a
 * running service), checked before anything changes. The route follows any policy at once, and a
 * PostgreSQL engine switches certificates with a reload; but a Redis engine serves either a TLS
 * port or a plaintext port, so between `off` and the other two its engines would have to restart,
 * which a policy change does not do.
 */
import { ErrorCode, SfError } from '../../common';
import type { ServiceTlsPolicy } from './service-schema';
import type { ServiceRecord } from './service-types';

/**
 * Throws `SF_ERR_INVALID_REQUEST` naming `tls` for a change that cannot be made live; otherwise
 * returns the certificate a PostgreSQL service's engines will present (issued now when
 * `certificate` is given and the new policy has TLS).
 */
export async function tlsPolicyChange(
  service: Pick<ServiceRecord, 'name' | 'engine' | 'tls' | 'tlsCertificate'>,
  wanted: ServiceTlsPolicy,
  caAvailable: boolean,
  certificate?: (service: string) => Promise<{ certFile: string; keyFile: string }>,
): Promise<{ certFile: string; keyFile: string } | undefined> {
  const current = service.tls ?? 'off';
  if (wanted === current) return service.tlsCertificate;
  if (wanted !== 'off' && !caAvailable)
    throw new SfError(
      ErrorCode.InvalidRequest,
      `tls '${wanted}' needs a platform CA: start control with --ca-dir (sf up does)`,
      'tls',
    );
  if (service.engine === 'redis' && (current === 'off') !== (wanted === 'off'))
    throw new SfError(
      ErrorCode.InvalidRequest,
      `tls '${current}' -> '${wanted}' is not possible on a running redis service: its engines serve either a TLS port or a plaintext port, and changing that needs a restart; 'optional' <-> 'required' is possible`,
      'tls',
    );
  if (service.engine === 'postgres' && wanted !== 'off' && certificate) return certificate(service.name);
  return service.tlsCertificate;
}
