/**
 * Router groups (Cloud Foundry's `router_groups`): a name, type `tcp` and the ports routes of the
 * group may use. Reservable ranges of different groups never overlap, so a port names exactly one
 * group and one route in the whole installation.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DEFAULT_ROUTER_GROUP, type KeyLayout } from '../../protocol';
import { DEFAULT_RESERVABLE_PORTS, parsePortRanges, rangesContain, rangesOverlap, type PortRange } from './port-ranges';
import { ErrorCode, SfError } from '../../common';
import { withCasRetry } from './cas-commit';

export interface RouterGroup {
  guid: string;
  name: string;
  type: 'tcp';
  reservable_ports: string;
}

export interface RouterGroupInput {
  name: string;
  type: 'tcp';
  reservable_ports: string;
}

export class RouterGroupStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: KeyLayout,
  ) {}

  /** Creates the `default` group unless a group of that name exists (safe to race). */
  async ensureDefault(reservablePorts = DEFAULT_RESERVABLE_PORTS): Promise<RouterGroup> {
    const existing = await this.byName(DEFAULT_ROUTER_GROUP);
    if (existing) return existing;
    try {
      return await this.create({ name: DEFAULT_ROUTER_GROUP, type: 'tcp', reservable_ports: reservablePorts });
    } catch (err) {
      const winner = await this.byName(DEFAULT_ROUTER_GROUP);
      if (winner) return winner; // Another control created it first.
      throw err;
    }
  }

  async list(): Promise<RouterGroup[]> {
    const all = await this.redis.hvals(this.keys.routerGroups);
    return all.map((text) => JSON.parse(text) as RouterGroup).sort((a, b) => a.name.localeCompare(b.name));
  }

  async get(guid: string): Promise<RouterGroup | null> {
    const text = await this.redis.hget(this.keys.routerGroups, guid);
    return text ? (JSON.parse(text) as RouterGroup) : null;
  }

  async mustGet(guid: string, field = 'guid'): Promise<RouterGroup> {
    const group = await this.get(guid);
    if (!group) throw new SfError(ErrorCode.NotFound, `${field} '${guid}' names no router group`, field);
    return group;
  }

  async byName(name: string): Promise<RouterGroup | null> {
    return (await this.list()).find((g) => g.name === name) ?? null;
  }

  async create(input: RouterGroupInput): Promise<RouterGroup> {
    const ranges = parsePortRanges(input.reservable_ports);
    return withCasRetry(async () => {
      const { version, groups } = await this.readAll();
      if (groups.some((g) => g.name === input.name)) {
        throw new SfError(ErrorCode.RouterGroupExists, `name '${input.name}' is already taken`, 'name');
      }
      this.checkNoOverlap(ranges, groups);
      const group: RouterGroup = { guid: randomUUID(), ...input };
      return {
        guards: [{ key: this.keys.routerGroupsVersion, expected: version }],
        ops: [{ cmd: 'HSET', key: this.keys.routerGroups, field: group.guid, value: JSON.stringify(group) }],
        result: group,
      };
    }, this.redis);
  }

  /** Changes a group's ports; refused when they would overlap another group or strand a route. */
  async update(
    guid: string,
    reservablePorts: string,
    portsInUse: (group: RouterGroup) => Promise<number[]>,
  ): Promise<RouterGroup> {
    const ranges = parsePortRanges(reservablePorts);
    return withCasRetry(async () => {
      const { version, groups } = await this.readAll();
      const current = groups.find((g) => g.guid === guid);
      if (!current) throw new SfError(ErrorCode.NotFound, `guid '${guid}' names no router group`, 'guid');
      this.checkNoOverlap(
        ranges,
        groups.filter((g) => g.guid !== guid),
      );
      const stranded = (await portsInUse(current)).find((p) => !rangesContain(ranges, p));
      if (stranded !== undefined) {
        throw new SfError(
          ErrorCode.PortConflict,
          `reservable_ports must keep port ${stranded}, which has routes`,
          'reservable_ports',
        );
      }
      const group: RouterGroup = { ...current, reservable_ports: reservablePorts };
      return {
        guards: [{ key: this.keys.routerGroupsVersion, expected: version }],
        ops: [{ cmd: 'HSET', key: this.keys.routerGroups, field: guid, value: JSON.stringify(group) }],
        result: group,
      };
    }, this.redis);
  }

  async delete(guid: string, portsInUse: (group: RouterGroup) => Promise<number[]>): Promise<void> {
    await withCasRetry(async () => {
      const { version, groups } = await this.readAll();
      const current = groups.find((g) => g.guid === guid);
      if (!current) return { done: undefined };
      if ((await portsInUse(current)).length > 0) {
        throw new SfError(ErrorCode.RouterGroupInUse, `router group '${current.name}' still has routes`, 'guid');
      }
      return {
        guards: [{ key: this.keys.routerGroupsVersion, expected: version }],
        ops: [{ cmd: 'HDEL', key: this.keys.routerGroups, field: guid }],
        result: undefined,
      };
    }, this.redis);
  }

  private async readAll(): Promise<{ version: number; groups: RouterGroup[] }> {
    const res = await this.redis.multi().get(this.keys.routerGroupsVersion).hvals(this.keys.routerGroups).exec();
    const version = Number(res?.[0]?.[1] ?? 0);
    const groups = ((res?.[1]?.[1] as string[] | undefined) ?? []).map((t) => JSON.parse(t) as RouterGroup);
    return { version, groups };
  }

  private checkNoOverlap(ranges: PortRange[], others: RouterGroup[]): void {
    for (const other of others) {
      const port = rangesOverlap(ranges, parsePortRanges(other.reservable_ports));
      if (port !== null) {
        throw new SfError(
          ErrorCode.PortConflict,
          `reservable_ports overlap router group '${other.name}' at port ${port}`,
          'reservable_ports',
        );
      }
    }
  }
}
