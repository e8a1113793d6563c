/**
 * What the volume tests (volumes, snapshots, volume moves) share: clients of a service's engine
 * through its route, creating a service and waiting for it, a key the engine accepts, and where a
 * cell keeps an instance's volume.
 */
import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { ServiceView } from '../../control';
import type { ServiceCluster } from './service-cluster';
import { serviceKey, type ServiceKeyAuth } from './service-key';
import { eventually } from './tcp-client';

const PSQL = '/usr/lib/postgresql/15/bin/psql';

/** One statement through psql; resolves with its output, or `ERROR ...` (never rejects). */
export function psql(port: number, auth: ServiceKeyAuth, sql: string): Promise<string> {
  return new Promise((resolve) => {
    const env = { PATH: process.env.PATH ?? '', PGCONNECT_TIMEOUT: '5', PGPASSWORD: auth.password };
    execFile(
      PSQL,
      ['-h', '127.0.0.1', '-p', String(port), '-U', auth.username, '-d', 'postgres', '-w', '-XAtq', '-c', sql],
      { env, timeout: 30_000 },
      (err, stdout, stderr) => resolve(err ? `ERROR ${stderr || err.message}` : stdout.trim()),
    );
  });
}

/** A client that gives up at once: for checks that a command fails. */
export function redisClient(port: number, auth: ServiceKeyAuth): Redis {
  const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null, ...auth });
  client.on('error', () => undefined);
  return client;
}

/**
 * A client that reconnects (through a switch of backends) and has no offline queue, connected
 * before it is returned: without the queue a command before `ready` fails.
 */
export async function reconnectingRedisClient(port: number, auth: ServiceKeyAuth): Promise<Redis> {
  const client = new Redis({
    port,
    host: '127.0.0.1',
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => 50,
    ...auth,
  });
  client.on('error', () => undefined);
  await eventually(async () => client.status === 'ready', 30_000, `redis on ${port} ready`);
  return client;
}

/** Creates a service (no replicas unless asked) and waits until it runs. */
export async function createService(
  cluster: ServiceCluster,
  body: Record<string, unknown>,
  timeoutMs = 120_000,
): Promise<ServiceView> {
  const res = await cluster.api('POST', '/v3/service_instances', { replicas: 0, ...body });
  expect(res.status, JSON.stringify(res.body)).to.equal(201);
  return cluster.waitForService(body.name as string, timeoutMs).catch(async (err: unknown) => {
    // The helper's message is built before its first poll; say what the service looks like now.
    const now = await cluster.api('GET', `/v3/service_instances/${body.name as string}`);
    console.log(JSON.stringify(now.body));
    throw err;
  });
}

/**
 * A service key the engine accepts: on a loaded machine PostgreSQL may apply it after the API's
 * wait (502, "stored, but not applied yet"), so the stored key is used once the engine takes it.
 */
export async function keyOf(cluster: ServiceCluster, service: string): Promise<ServiceKeyAuth> {
  const key = await serviceKey(cluster.api, service).catch(async () => {
    const res = await cluster.api<ServiceKeyAuth>('GET', `/v3/service_instances/${service}/keys/test`);
    expect(res.status).to.equal(200);
    return { username: res.body.username, password: res.body.password };
  });
  const view = (await cluster.api<ServiceView>('GET', `/v3/service_instances/${service}`)).body;
  if (view.engine === 'postgres')
    await eventually(async () => (await psql(view.port, key, 'select 1')) === '1', 30_000, `key of ${service}`);
  return key;
}

/** An instance's volume directory on a cell of the cluster. */
export function volumeDir(cluster: ServiceCluster, cell: string, instance: string): string {
  return path.join(cluster.dataDir, cell, 'instances', instance);
}

export const exists = (p: string): Promise<boolean> =>
  access(p).then(
    () => true,
    () => false,
  );
