/** The engines a cell offers, by kind; one place to construct them with their options. */
import type { EngineKind } from '../protocol';
import type { Engine } from './engine';
import { PostgresEngine, type PostgresEngineOptions } from './engine-postgres';
import { RedisEngine, type RedisEngineOptions } from './engine-redis';
import { TcpEngine, type TcpEngineOptions } from './engine-tcp';

export type EngineRegistry = Record<EngineKind, Engine>;

export interface EngineRegistryOptions {
  redis?: RedisEngineOptions;
  postgres?: PostgresEngineOptions;
  tcp?: TcpEngineOptions;
}

export function createEngineRegistry(options: EngineRegistryOptions = {}): EngineRegistry {
  return {
    redis: new RedisEngine(options.redis),
    postgres: new PostgresEngine(options.postgres),
    tcp: new TcpEngine(options.tcp),
  };
}

/** The kinds whose binaries are present on this host. */
export async function availableEngines(registry: EngineRegistry): Promise<EngineKind[]> {
  const kinds: EngineKind[] = [];
  for (const engine of Object.values(registry)) if ((await engine.available()).ok) kinds.push(engine.kind);
  return kinds;
}
