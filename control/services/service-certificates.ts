/**
 * Certificates of services with TLS (docs/tls.md): control issues one per service from the
 * platform CA (`sf control --ca-dir`), for the names a client may use to reach the router port,
 * and the service's route names its files so the router terminates TLS with it. The files sit in
 * the CA's `issued/` directory on control's host; a router on another host needs that directory
 * (or a copy kept current) at the same path.
 */
import { hostname } from 'node:os';
import { PlatformCa } from '../../common';
import { routeTlsSchema, type RouteTls } from '../../protocol';
import type { ServiceRecord } from './service-types';
import type { ServiceTlsPolicy } from './service-schema';

/** @default how long a checked certificate is trusted before it is checked for renewal again: 1 hour */
export const SERVICE_CERT_RECHECK_MS = 3_600_000;

/**
 * The client certificate routers present to engines (`issued/router-client.crt`): engines with a
 * platform certificate require one the platform CA signed of every TCP client (docs/tls.md). It
 * names no address (a client's), only this name.
 */
export const ROUTER_CLIENT_CERT = 'router-client';
const ROUTER_CLIENT_NAME = 'sf-router';
/** Its entry among the checked certificates: not a name a service can have. */
const ROUTER_CLIENT_KEY = '/router-client';

/** A certificate and key on control's host. */
export interface CertificatePair {
  certFile: string;
  keyFile: string;
}

export interface ServiceTlsFiles {
  certFile: string;
  keyFile: string;
  /** The CA certificate clients verify with. */
  caFile: string;
}

export class ServiceCertificates {
  private readonly checked = new Map<string, { at: number; files: Promise<ServiceTlsFiles> }>();

  constructor(
    private readonly ca: PlatformCa,
    /** Names besides the service's own every certificate carries (the router's addresses). */
    private readonly routerNames: string[],
    private readonly recheckMs = SERVICE_CERT_RECHECK_MS,
  ) {}

  static async open(
    caDir: string,
    routerHost: string,
    operator?: { certFile: string; keyFile: string },
  ): Promise<ServiceCertificates> {
    const names = [...new Set(['localhost', '127.0.0.1', '::1', hostname(), routerHost])];
    return new ServiceCertificates(await PlatformCa.open(caDir, {}, operator), names);
  }

  get caFile(): string {
    return this.ca.certFile;
  }

  /** The service's certificate, issued or renewed when due; checked at most once per `recheckMs`. */
  ensure(service: string, now = Date.now()): Promise<ServiceTlsFiles> {
    const cached = this.checked.get(service);
    if (cached && now - cached.at < this.recheckMs) return cached.files;
    return this.issue(service, now, false);
  }

  /**
   * The routers' client certificate towards engines, issued or renewed when due; checked at most
   * once per `recheckMs`, as services' are.
   */
  routerClient(now = Date.now()): Promise<CertificatePair> {
    const cached = this.checked.get(ROUTER_CLIENT_KEY);
    if (cached && now - cached.at < this.recheckMs) return cached.files;
    const files = this.ca
      .ensure(ROUTER_CLIENT_CERT, [ROUTER_CLIENT_NAME], new Date(now))
      .then((c) => ({ certFile: c.certFile, keyFile: c.keyFile, caFile: this.ca.certFile }));
    this.checked.set(ROUTER_CLIENT_KEY, { at: now, files });
    files.catch(() => this.checked.delete(ROUTER_CLIENT_KEY));
    return files;
  }

  /**
   * A new key and certificate for the service now, however long the current one has to run (a
   * key that may have leaked). Written over the same files, which every holder reloads (docs/tls.md).
   */
  async rotate(service: string, now = Date.now()): Promise<ServiceTlsFiles & { notAfter: Date }> {
    let notAfter = new Date(0);
    const files = await this.issue(service, now, true, (d) => (notAfter = d));
    return { ...files, notAfter };
  }

  private issue(
    service: string,
    now: number,
    force: boolean,
    issued?: (notAfter: Date) => void,
  ): Promise<ServiceTlsFiles> {
    const files = this.ca
      .ensure(`service-${service}`, [service, ...this.routerNames.filter((n) => n !== service)], new Date(now), force)
      .then((c) => {
        issued?.(c.notAfter);
        return { certFile: c.certFile, keyFile: c.keyFile, caFile: this.ca.certFile };
      });
    this.checked.set(service, { at: now, files });
    // A failed issue is retried on the next call, not remembered for an hour.
    files.catch(() => this.checked.delete(service));
    return files;
  }
}

/**
 * The route TLS section of a service: terminated by the router with the service's certificate;
 * PostgreSQL clients ask for TLS with an SSLRequest first. Undefined for `off`.
 */
export function serviceRouteTls(
  service: Pick<ServiceRecord, 'engine' | 'name' | 'tlsCertificate'> & { tls?: ServiceTlsPolicy },
  files: ServiceTlsFiles,
  /** The routers' client certificate: engines with a platform certificate require one. */
  routerClient?: CertificatePair,
): RouteTls | undefined {
  if (!service.tls || service.tls === 'off') return undefined;
  return routeTlsSchema.parse({
    mode: 'terminate',
    startup: service.engine === 'postgres' ? 'postgres' : 'tls',
    policy: service.tls,
    certFile: files.certFile,
    keyFile: files.keyFile,
    // Engines that serve TLS are verified against the platform CA, not the system's CAs.
    backendCaFile: files.caFile,
    // PostgreSQL engines present this same certificate (SCRAM channel binding, docs/tls.md),
    // which names the service, not the cells the router connects to; so do the engines of a
    // Redis service admitted with one (an older one's present their cell's, named by address).
    ...(service.engine === 'postgres' || (service.engine === 'redis' && service.tlsCertificate)
      ? { backendServerName: service.name }
      : {}),
    ...(routerClient ? { backendCertFile: routerClient.certFile, backendKeyFile: routerClient.keyFile } : {}),
  });
}
