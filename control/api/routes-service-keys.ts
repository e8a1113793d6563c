/**
 * CF-style service keys: `/v3/service_instances/:name/keys[/:key]`. A key is one
 * client user of the service's engine — a Redis ACL user, a PostgreSQL SCRAM role — with its own
 * password. Creating or deleting one changes the service's record and its instances' desired
 * specs in one guarded commit (so a restarted instance comes back with the right users), then
 * orders every running instance to apply the new set and waits for each: a revoked key fails on
 * the engine by the time the answer arrives, and its open sessions are closed.
 *
 * Every endpoint needs write scope, listing included; this is the one place an API body carries
 * a secret (the key's password), and only for the key asked for.
 */
import { readFile } from 'node:fs/promises';
import type { Redis } from 'ioredis';
import { ErrorCode, SfError } from '../../common';
import type { CellDirectory } from '../services/cell-directory';
import {
  instanceCredentials,
  keyUsername,
  generatePassword,
  serviceKeyCredentials,
  serviceKeyCreateSchema,
  MAX_SERVICE_KEYS,
} from '../services/service-credentials';
import type { ServiceStore } from '../services/service-store';
import type { ServiceCredentials, ServiceRecord } from '../services/service-types';
import { putDesiredOps, sendOrder } from '../state/cell-client';
import type { CasOp } from '../state/cas-commit';
import type { HttpServer } from './http-server';
import { validateBody } from './routing-schemas';

export interface ServiceKeysApiDeps {
  store: ServiceStore;
  directory: CellDirectory;
  redis: Redis;
  /** The router address clients use, given in each key's `host` and `uri`. */
  routerHost: string;
  /** The platform CA certificate file, handed to keys of services with TLS. @default none */
  caFile?: string;
  /** How long each instance may take to apply a change. @default 15000 */
  applyTimeoutMs?: number;
}

/** @default ServiceKeysApiDeps.routerHost */
export const DEFAULT_ROUTER_HOST = '127.0.0.1';

export function registerServiceKeysApi(server: HttpServer, deps: ServiceKeysApiDeps): void {
  const keyBody = async (record: ServiceRecord, key: string): Promise<Record<string, unknown>> => {
    const stored = record.credentials?.keys[key];
    if (!stored) throw new SfError(ErrorCode.NotFound, `service '${record.name}' has no key named '${key}'`, 'key');
    // Read per request: the CA file is small, and an operator may replace it.
    const ca =
      deps.caFile && record.tls && record.tls !== 'off'
        ? { file: deps.caFile, pem: await readFile(deps.caFile, 'utf8') }
        : undefined;
    return {
      name: key,
      service: record.name,
      engine: record.engine,
      created_at: new Date(stored.createdAt).toISOString(),
      ...serviceKeyCredentials(record, stored, deps.routerHost, ca),
    };
  };

  server.route('post', '/v3/service_instances/:name/keys', 'write', async (ctx) => {
    const req = validateBody(serviceKeyCreateSchema, await ctx.body(), '');
    const record = await changeKeys(deps, ctx.params.name, 'service-key-created', req.name, (creds) => {
      if (creds.keys[req.name])
        throw new SfError(
          ErrorCode.ServiceKeyExists,
          `service '${ctx.params.name}' already has a key named '${req.name}'`,
          'name',
        );
      if (Object.keys(creds.keys).length >= MAX_SERVICE_KEYS)
        throw new SfError(ErrorCode.InvalidRequest, `a service has at most ${MAX_SERVICE_KEYS} keys`, 'name');
      creds.keys[req.name] = { username: keyUsername(req.name), password: generatePassword(), createdAt: Date.now() };
    });
    await applyNow(deps, record, `key '${req.name}' is stored`);
    return { status: 201, body: await keyBody(record, req.name) };
  });

  server.route('get', '/v3/service_instances/:name/keys', 'write', async (ctx) => {
    const record = await deps.store.mustGet(ctx.params.name);
    const keys = Object.entries(record.credentials?.keys ?? {}).sort(([a], [b]) => a.localeCompare(b));
    return {
      body: {
        resources: keys.map(([name, k]) => ({
          name,
          username: k.username,
          created_at: new Date(k.createdAt).toISOString(),
        })),
      },
    };
  });

  server.route('get', '/v3/service_instances/:name/keys/:key', 'write', async (ctx) => {
    return { body: await keyBody(await deps.store.mustGet(ctx.params.name), ctx.params.key) };
  });

  server.route('del', '/v3/service_instances/:name/keys/:key', 'write', async (ctx) => {
    const key = ctx.params.key;
    const record = await changeKeys(deps, ctx.params.name, 'service-key-deleted', key, (creds) => {
      if (!creds.keys[key])
        throw new SfError(ErrorCode.NotFound, `service '${ctx.params.name}' has no key named '${key}'`, 'key');
      delete creds.keys[key];
    });
    await applyNow(deps, record, `key '${key}' is revoked in the store`);
    return { status: 204 };
  });
}

/**
 * One guarded commit: the record with the changed keys and a higher credentials version, and
 * every written desired spec of the service with the new set. Specs are patched as stored (not
 * rebuilt), so nothing else of them changes; a leader write in between bumps the services
 * version and this commit retries on the fresh state.
 */
async function changeKeys(
  deps: ServiceKeysApiDeps,
  name: string,
  type: 'service-key-created' | 'service-key-deleted',
  key: string,
  mutate: (creds: ServiceCredentials) => void,
): Promise<ServiceRecord> {
  const keys = deps.store.keys;
  return deps.store.change<ServiceRecord>(name, null, async (current) => {
    if (!current) throw new SfError(ErrorCode.NotFound, `no service named '${name}'`, 'name');
    if (!current.credentials)
      throw new SfError(ErrorCode.EngineUnsupported, `engine ${current.engine} has no users to give keys for`, 'name');
    if (current.status === 'deleting')
      throw new SfError(ErrorCode.ActionRefused, `service '${name}' is being deleted`, 'name');
    const credentials: ServiceCredentials = structuredClone(current.credentials);
    mutate(credentials);
    credentials.version += 1;
    const record: ServiceRecord = { ...current, credentials, updatedAt: Date.now() };
    const extraOps: CasOp[] = [];
    const set = instanceCredentials(credentials);
    for (const inst of record.instances) {
      if (!inst.specWritten) continue;
      const stored = await deps.redis.hget(keys.cell(inst.cell).desired, inst.id);
      if (!stored) continue;
      extraOps.push(...putDesiredOps(keys, inst.cell, { ...JSON.parse(stored), credentials: set }));
    }
    const verb = type === 'service-key-created' ? 'created' : 'deleted';
    const events = [{ type, service: name, message: `service key '${key}' ${verb}` }];
    return { change: { record, extraOps, events }, result: record };
  });
}

/** Orders every running instance to apply the record's set now, and waits for each answer. */
async function applyNow(deps: ServiceKeysApiDeps, record: ServiceRecord, stored: string): Promise<void> {
  if (!record.credentials) return;
  const credentials = instanceCredentials(record.credentials);
  const cells = await deps.directory.snapshot();
  const pending: string[] = [];
  await Promise.all(
    record.instances.map(async (inst) => {
      const cell = cells.get(inst.cell);
      if (!cell?.alive || cell.actual.get(inst.id)?.state !== 'running') return;
      try {
        const result = await sendOrder(
          deps.redis,
          deps.store.keys,
          inst.cell,
          { type: 'credentials', instanceId: inst.id, credentials },
          { timeoutMs: deps.applyTimeoutMs ?? 15_000 },
        );
        if (!result.ok) pending.push(`${inst.id} (${result.error?.message ?? 'failed'})`);
      } catch (err) {
        pending.push(`${inst.id} (${(err as Error).message})`);
      }
    }),
  );
  if (pending.length) {
    throw new SfError(
      ErrorCode.OrderFailed,
      `${stored}, but not applied yet by ${pending.join(', ')}; the cells apply it from their desired specs`,
    );
  }
}
