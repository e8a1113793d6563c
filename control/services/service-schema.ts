/** The create-service request, validated once at the edge; errors name the field. */
import { MAX_SNAPSHOT_KEEP } from './snapshot-keep';
import { z } from 'zod';
import { DISK_SYNC_MODES, ENGINE_KINDS, EXECUTOR_KINDS, SIDECAR_ENGINES, SIDECAR_KINDS } from '../../protocol';

/** Replicas per service: beyond this a mistake is likelier than a need. */
export const MAX_REPLICAS = 8;

/**
 * TLS between clients and the service's router port (docs/tls.md): `required` refuses plaintext
 * clients, `optional` serves both, `off` serves plaintext only.
 */
export const SERVICE_TLS_POLICIES = ['required', 'optional', 'off'] as const;
export type ServiceTlsPolicy = (typeof SERVICE_TLS_POLICIES)[number];

/** @default values applied to omitted fields of a create request */
export const DEFAULT_SERVICE_REQUEST = {
  replicas: 1,
  durability: 'async',
  volume: { size_mb: 256 },
  fencing: { policy: 'auto' },
  router_group: 'default',
} as const;

/**
 * The `/v3` API speaks snake_case like Cloud Foundry's v3 (`size_mb`, `router_group`,
 * `created_at`). `volume.sizeMb`, which earlier versions took, is still read as `size_mb` so
 * that existing clients keep working; answers carry only `size_mb`.
 */
function legacyVolume(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  const { sizeMb, ...rest } = value as Record<string, unknown>;
  return sizeMb === undefined || 'size_mb' in rest ? value : { size_mb: sizeMb, ...rest };
}

/** A service's name. Ending in '-' would give instance ids like `x--0`: a name starts and ends alike. */
export const SERVICE_NAME_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
export const SERVICE_NAME_RULE =
  'must be 1-63 lowercase letters, digits or -, starting and ending with a letter or digit';

export const serviceCreateSchema = z
  .object({
    name: z.string({ error: 'must be a string' }).regex(SERVICE_NAME_PATTERN, SERVICE_NAME_RULE),
    engine: z.enum(ENGINE_KINDS, { error: `must be one of ${ENGINE_KINDS.join(', ')}` }),
    replicas: z
      .number({ error: 'must be an integer' })
      .int('must be an integer')
      .min(0, 'must be at least 0')
      .max(MAX_REPLICAS, `must be at most ${MAX_REPLICAS}`)
      .default(DEFAULT_SERVICE_REQUEST.replicas),
    durability: z
      .enum(['sync', 'async'], { error: 'must be sync or async' })
      .default(DEFAULT_SERVICE_REQUEST.durability),
    /** Absent: `always` with sync durability, `interval` with async (docs/volumes.md). */
    disk_sync: z.enum(DISK_SYNC_MODES, { error: `must be one of ${DISK_SYNC_MODES.join(', ')}` }).optional(),
    volume: z
      .preprocess(
        legacyVolume,
        z
          .object({
            size_mb: z
              .number({ error: 'must be an integer' })
              .int('must be an integer')
              .min(1, 'must be at least 1')
              .max(1_048_576, 'must be at most 1048576'),
          })
          .strict(),
      )
      .default({ ...DEFAULT_SERVICE_REQUEST.volume }),
    fencing: z
      .object({ policy: z.enum(['auto', 'manual'], { error: 'must be auto or manual' }) })
      .strict()
      .default({ ...DEFAULT_SERVICE_REQUEST.fencing }),
    router_group: z.string().min(1, 'must not be empty').default(DEFAULT_SERVICE_REQUEST.router_group),
    /** Absent: control's default (`required` when it has a platform CA, else `off`). */
    tls: z.enum(SERVICE_TLS_POLICIES, { error: `must be one of ${SERVICE_TLS_POLICIES.join(', ')}` }).optional(),
    executor: z.enum(EXECUTOR_KINDS, { error: `must be one of ${EXECUTOR_KINDS.join(', ')}` }).optional(),
    /**
     * Limits per instance: the docker executor makes them the container's memory and CPU limits
     * (the process executor runs engines without limits).
     */
    resources: z
      .object({
        memory_mb: z
          .number({ error: 'must be an integer' })
          .int('must be an integer')
          .min(16, 'must be at least 16')
          .max(1_048_576, 'must be at most 1048576')
          .optional(),
        cpus: z
          .number({ error: 'must be a number' })
          .positive('must be positive')
          .max(1024, 'must be at most 1024')
          .optional(),
      })
      .strict()
      .optional(),
    /** Sidecars each instance carries (its pod), sharing its network and volume (docs/cells.md, Pods). */
    sidecars: z
      .array(z.enum(SIDECAR_KINDS, { error: `must be one of ${SIDECAR_KINDS.join(', ')}` }), {
        error: 'must be an array',
      })
      .max(SIDECAR_KINDS.length, `must list at most ${SIDECAR_KINDS.length} sidecars`)
      .optional(),
    /** Engine `tcp` only: the command to run, with `{port}`, `{host}` and `{dataDir}` placeholders. */
    command: z
      .object({ file: z.string().min(1, 'must not be empty'), args: z.array(z.string()).default([]) })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((v, ctx) => {
    if (v.engine === 'tcp' && !v.command)
      ctx.addIssue({ code: 'custom', path: ['command'], message: 'is required for engine tcp' });
    if (v.engine !== 'tcp' && v.command)
      ctx.addIssue({ code: 'custom', path: ['command'], message: 'is only allowed for engine tcp' });
    const seen = new Set<string>();
    for (const sidecar of v.sidecars ?? []) {
      if (SIDECAR_ENGINES[sidecar] !== v.engine)
        ctx.addIssue({
          code: 'custom',
          path: ['sidecars'],
          message: `${sidecar} serves engine ${SIDECAR_ENGINES[sidecar]}, not ${v.engine}`,
        });
      if (seen.has(sidecar)) ctx.addIssue({ code: 'custom', path: ['sidecars'], message: `lists ${sidecar} twice` });
      seen.add(sidecar);
    }
  });

/** `PATCH /v3/service_instances/:name`: what may change on a running service. */
export const serviceUpdateSchema = z
  .object({
    disk_sync: z.enum(DISK_SYNC_MODES, { error: `must be one of ${DISK_SYNC_MODES.join(', ')}` }).optional(),
    /** Snapshots retention keeps when a snapshot request names no `keep` (default 7). */
    snapshot_keep: z
      .number({ error: 'must be an integer' })
      .int('must be an integer')
      .min(1, 'must be at least 1')
      .max(MAX_SNAPSHOT_KEEP, `must be at most ${MAX_SNAPSHOT_KEEP}`)
      .optional(),
    /** The TLS policy (docs/tls.md, Changing the policy of a running service). */
    tls: z.enum(SERVICE_TLS_POLICIES, { error: `must be one of ${SERVICE_TLS_POLICIES.join(', ')}` }).optional(),
  })
  .strict()
  .refine((b) => b.disk_sync !== undefined || b.snapshot_keep !== undefined || b.tls !== undefined, {
    message: 'give disk_sync, snapshot_keep or tls',
  });
export type ServiceUpdateRequest = z.output<typeof serviceUpdateSchema>;

export type ServiceCreateRequest = z.output<typeof serviceCreateSchema>;
export type ServiceCreateInput = z.input<typeof serviceCreateSchema>;
