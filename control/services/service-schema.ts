/** The create-service request, validated once at the edge; errors name the field. */
import { z } from 'zod';
import { ENGINE_KINDS, EXECUTOR_KINDS } from '../../protocol';

/** Replicas per service: beyond this a mistake is likelier than a need. */
export const MAX_REPLICAS = 8;

/** @default values applied to omitted fields of a create request */
export const DEFAULT_SERVICE_REQUEST = {
  replicas: 1,
  durability: 'async',
  volume: { sizeMb: 256 },
  fencing: { policy: 'auto' },
  router_group: 'default',
} as const;

export const serviceCreateSchema = z
  .object({
    name: z
      .string({ error: 'must be a string' })
      .regex(
        /^[a-z0-9][a-z0-9-]{0,62}$/,
        'must be 1-63 lowercase letters, digits or -, starting with a letter or digit',
      ),
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
    volume: z
      .object({
        sizeMb: z
          .number({ error: 'must be an integer' })
          .int('must be an integer')
          .min(1, 'must be at least 1')
          .max(1_048_576, 'must be at most 1048576'),
      })
      .strict()
      .default({ ...DEFAULT_SERVICE_REQUEST.volume }),
    fencing: z
      .object({ policy: z.enum(['auto', 'manual'], { error: 'must be auto or manual' }) })
      .strict()
      .default({ ...DEFAULT_SERVICE_REQUEST.fencing }),
    router_group: z.string().min(1, 'must not be empty').default(DEFAULT_SERVICE_REQUEST.router_group),
    executor: z.enum(EXECUTOR_KINDS, { error: `must be one of ${EXECUTOR_KINDS.join(', ')}` }).optional(),
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
  });

export type ServiceCreateRequest = z.output<typeof serviceCreateSchema>;
export type ServiceCreateInput = z.input<typeof serviceCreateSchema>;
