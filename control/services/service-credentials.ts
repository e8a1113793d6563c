/**
 * A service's credentials: generated at creation, kept in its record in the state
 * store, written into its instances' specs, and handed out per service key, CF-style. Pure
 * functions; the API's side is api/routes-service-keys.ts.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { EngineKind, InstanceCredentials } from '../../protocol';
import type { ServiceCredentials, ServiceRecord, ServiceUser } from './service-types';
import type { ServiceTlsPolicy } from './service-schema';

/** Engines that have users; `tcp` runs anything and has none the platform knows of. */
export function hasCredentials(engine: EngineKind): boolean {
  return engine === 'redis' || engine === 'postgres';
}

/** 256 bits, URL-safe, so a password can sit in a URI and a config file without quoting. */
export function generatePassword(): string {
  return randomBytes(32).toString('base64url');
}

/** @default names of the platform's own users in every engine */
export const PLATFORM_USERS = { admin: 'sf_admin', replication: 'sf_replication', monitoring: 'sf_monitor' } as const;

/**
 * The platform users of a new service. PostgreSQL's management user is the cluster's superuser
 * (`postgres`, what initdb creates), Redis's the ACL user `sf_admin`.
 */
export function newServiceCredentials(engine: EngineKind): ServiceCredentials {
  return {
    version: 1,
    admin: { username: engine === 'postgres' ? 'postgres' : PLATFORM_USERS.admin, password: generatePassword() },
    replication: { username: PLATFORM_USERS.replication, password: generatePassword() },
    monitoring: { username: PLATFORM_USERS.monitoring, password: generatePassword() },
    keys: {},
  };
}

/** Key names: like service names, short enough that `key-NAME` is a valid PostgreSQL role. */
export const serviceKeyNameSchema = z
  .string({ error: 'must be a string' })
  .regex(/^[a-z0-9][a-z0-9-]{0,49}$/, 'must be 1-50 lowercase letters, digits or -, starting with a letter or digit');

export const serviceKeyCreateSchema = z.object({ name: serviceKeyNameSchema }).strict();

/** @default at most this many keys per service */
export const MAX_SERVICE_KEYS = 100;

export function keyUsername(key: string): string {
  return `key-${key}`;
}

/** What a cell needs: the platform users and one user per key. */
export function instanceCredentials(creds: ServiceCredentials): InstanceCredentials {
  const users: ServiceUser[] = Object.values(creds.keys).map(({ username, password }) => ({ username, password }));
  users.sort((a, b) => a.username.localeCompare(b.username));
  return {
    version: creds.version,
    admin: creds.admin,
    replication: creds.replication,
    ...(creds.monitoring ? { monitoring: creds.monitoring } : {}),
    users,
  };
}

/** The answer of `GET .../keys/:key`: what a CF binding's credentials block holds. */
export interface ServiceKeyCredentials {
  uri: string;
  host: string;
  port: number;
  username: string;
  password: string;
  /** PostgreSQL only. */
  database?: string;
  jdbcUrl?: string;
  /** The service's TLS policy; with `required` or `optional` the URIs ask for verified TLS. */
  tls: ServiceTlsPolicy;
  /** With TLS: the platform CA certificate (PEM) that clients verify the router with. */
  ca_certificate?: string;
  /** With TLS: where that certificate is on control's host (`sf ca --path` under sf up). */
  ca_file?: string;
}

/** Where a key's clients find the CA, for services with TLS. */
export interface ServiceKeyCa {
  file: string;
  pem: string;
}

/**
 * A key's credentials. With TLS (policy `required` or `optional`, and a CA) the URIs ask for it:
 * `rediss://` for Redis, `sslmode=verify-full` with the CA file for PostgreSQL, so a client that
 * takes the URI as it is verifies the router's certificate.
 */
export function serviceKeyCredentials(
  record: ServiceRecord,
  key: ServiceUser,
  host: string,
  ca?: ServiceKeyCa,
): ServiceKeyCredentials {
  const user = encodeURIComponent(key.username);
  const password = encodeURIComponent(key.password);
  const where = `${host.includes(':') ? `[${host}]` : host}:${record.port}`;
  const policy = record.tls ?? 'off';
  const tls = policy !== 'off' && ca !== undefined;
  const tlsFields = tls ? { tls: policy, ca_certificate: ca.pem, ca_file: ca.file } : { tls: policy };
  if (record.engine === 'postgres') {
    const ssl = tls ? `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.file)}` : '';
    return {
      uri: `postgresql://${user}:${password}@${where}/postgres${ssl ? `?${ssl}` : ''}`,
      host,
      port: record.port,
      username: key.username,
      password: key.password,
      database: 'postgres',
      jdbcUrl: `jdbc:postgresql://${where}/postgres?user=${user}&password=${password}${ssl ? `&${ssl}` : ''}`,
      ...tlsFields,
    };
  }
  return {
    uri: `${tls ? 'rediss' : 'redis'}://${user}:${password}@${where}`,
    host,
    port: record.port,
    username: key.username,
    password: key.password,
    ...tlsFields,
  };
}
