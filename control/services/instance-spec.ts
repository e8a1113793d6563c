/**
 * What a cell is told to run for one instance of a service: the mapping from control's service
 * model to the cell protocol's instance spec. Convergence and failover both write specs, so the
 * mapping lives here, below both of them, and the write itself (with its validation) is
 * `putDesiredOps` in state/cell-client.ts.
 */
import { defaultDiskSync, type InstanceSpecInput } from '../../protocol';
import type { InstanceRecord, ServiceRecord } from './service-types';
import { instanceCredentials } from './service-credentials';

/** @default 3000 ms: the lease a primary holds unless the reconciler is configured otherwise */
export const DEFAULT_PRIMARY_LEASE_TTL_MS = 3_000;

export function instanceSpec(
  service: ServiceRecord,
  inst: InstanceRecord,
  upstream: { host: string; port: number } | null,
  primaryLeaseTtlMs: number = DEFAULT_PRIMARY_LEASE_TTL_MS,
): InstanceSpecInput {
  return {
    instanceId: inst.id,
    service: service.name,
    engine: service.engine,
    role: inst.role,
    epoch: inst.epoch,
    generation: inst.generation,
    durability: service.durability,
    replicas: service.replicas,
    diskSync: service.diskSync ?? defaultDiskSync(service.durability, service.engine),
    volume: { sizeMb: service.volume.sizeMb },
    ...(inst.role === 'replica' && upstream ? { replicaOf: upstream } : {}),
    ...(service.command ? { command: service.command } : {}),
    ...(service.executor ? { executor: service.executor } : {}),
    ...(service.sidecars?.length ? { sidecars: service.sidecars } : {}),
    ...(service.resources ? { resources: service.resources } : {}),
    ...(inst.role === 'primary' && primaryLeaseTtlMs > 0 ? { lease: { ttlMs: primaryLeaseTtlMs } } : {}),
    ...(service.credentials ? { credentials: instanceCredentials(service.credentials) } : {}),
    // Only the first primary of a restored service starts from the snapshot; a cell ignores it
    // once the volume exists.
    ...(service.restore && service.restore.instanceId === inst.id
      ? { restoreFrom: { snapshotId: service.restore.snapshotId } }
      : {}),
    ...(inst.moveIn ? { moveIn: inst.moveIn } : {}),
    // The engine serves TLS with its cell's certificate, and the route re-encrypts to it.
    ...(service.tls && service.tls !== 'off' ? { tls: true } : {}),
    ...(service.tls === 'optional' ? { tlsOptional: true } : {}),
    // PostgreSQL engines present the route's certificate, for SCRAM channel binding.
    ...(service.tls && service.tls !== 'off' && service.tlsCertificate
      ? { tlsCertificate: service.tlsCertificate }
      : {}),
  };
}
