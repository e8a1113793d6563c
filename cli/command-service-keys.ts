/**
 * `sf create-service-key NAME KEY`, `sf service-key NAME KEY`, `sf service-keys NAME`,
 * `sf delete-service-key NAME KEY`: CF-style service keys, clients of
 * `/v3/service_instances/:name/keys`. The password is printed only by
 * `create-service-key` and `service-key`, the two commands that exist to hand it out.
 */
import { type Command } from 'commander';
import { ApiClient } from './api-client';
import { UsageError, exitWithError } from './cli-support';
import { formatTable, printResult } from './output-table';

interface ServiceKeyBody {
  name: string;
  service: string;
  engine: string;
  created_at: string;
  uri: string;
  host: string;
  port: number;
  username: string;
  password: string;
  database?: string;
}

const KEY_NAME = /^[a-z0-9][a-z0-9-]{0,49}$/;

function keyPath(name: string, key?: string): string {
  if (key !== undefined && !KEY_NAME.test(key))
    throw new UsageError(`KEY must be 1-50 lowercase letters, digits or -, starting with a letter or digit`);
  const base = `/v3/service_instances/${encodeURIComponent(name)}/keys`;
  return key === undefined ? base : `${base}/${encodeURIComponent(key)}`;
}

function keyDetail(k: ServiceKeyBody): string {
  const lines = [
    `service key ${k.name} of ${k.service} (${k.engine}):`,
    `  uri:      ${k.uri}`,
    `  host:     ${k.host}`,
    `  port:     ${k.port}`,
    `  username: ${k.username}`,
    `  password: ${k.password}`,
  ];
  if (k.database) lines.push(`  database: ${k.database}`);
  return lines.join('\n') + '\n';
}

async function createKey(name: string, key: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const body = await client.request<ServiceKeyBody>('POST', keyPath(name), { name: key });
  printResult(flags.json, body, () => keyDetail(body));
}

async function showKey(name: string, key: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const body = await client.request<ServiceKeyBody>('GET', keyPath(name, key));
  printResult(flags.json, body, () => keyDetail(body));
}

async function listKeys(name: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  const { resources } = await client.request<{
    resources: Array<Pick<ServiceKeyBody, 'name' | 'username' | 'created_at'>>;
  }>('GET', keyPath(name));
  printResult(flags.json, resources, () =>
    resources.length
      ? formatTable(
          ['KEY', 'USERNAME', 'CREATED'],
          resources.map((k) => [k.name, k.username, k.created_at]),
        )
      : `service ${name} has no keys\n`,
  );
}

async function deleteKey(name: string, key: string, flags: { json?: boolean }): Promise<void> {
  const client = await ApiClient.fromEnv();
  await client.request('DELETE', keyPath(name, key));
  printResult(flags.json, { deleted: key, service: name }, () => `service key ${key} of ${name} deleted and revoked\n`);
}

const run =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A) =>
    fn(...args).catch(exitWithError);

export function registerServiceKeyCommands(program: Command): void {
  program
    .command('create-service-key')
    .description("create a service key: a user of the service's engine with its own password")
    .argument('<name>', 'service name')
    .argument('<key>', 'key name (lowercase letters, digits, -)')
    .option('--json', 'machine-readable output')
    .action(run(createKey));

  program
    .command('service-key')
    .description("show a service key's credentials: uri, host, port, username, password")
    .argument('<name>', 'service name')
    .argument('<key>', 'key name')
    .option('--json', 'machine-readable output')
    .action(run(showKey));

  program
    .command('service-keys')
    .description("list a service's keys (names and users, no passwords)")
    .argument('<name>', 'service name')
    .option('--json', 'machine-readable output')
    .action(run(listKeys));

  program
    .command('delete-service-key')
    .description('delete a service key: the engine refuses it at once and its sessions are closed')
    .argument('<name>', 'service name')
    .argument('<key>', 'key name')
    .option('--json', 'machine-readable output')
    .action(run(deleteKey));
}
