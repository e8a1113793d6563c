/**
 * Router groups (Cloud Foundry's `router_groups`): a name, a type and, for `tcp`, the ports routes
 * of the group may use. Reservable ranges of different groups never overlap, so a port names
 * exactly one group and one route in the whole installation. `http` groups are stored for CF
 * clients that create them; Service Foundry routes no HTTP, so they hold no routes.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DEFAULT_ROUTER_GROUP, type KeyLayout } from '../../protocol';
import {
  DEFAULT_RESERVABLE_PORTS,
  parsePortRanges,
  parseReservablePorts,
  rangesContain,
  rangesOverlap,
  type PortRange,
} from './port-ranges';
import { ErrorCode, SfError, invalid } from '../../common';
import { withCasRetry } from './cas-commit';

export type RouterGroupType = 'tcp' | 'http';

export interface RouterGroup {
  guid: string;
  name: string;
  type: RouterGroupType;
  /** `''` for an `http` group. */
  reservable_ports: string;
}

export interface RouterGroupInput {
  name: string;
  type: RouterGroupType;
  reservable_ports: string;
}

/**
 * Checks Service Foundry makes beyond Cloud Foundry's; each may be switched off to behave as CF
 * does (`sf control --routing-compat cf`).
 */
export interface RouterGroupChecks {
  /** Refuse a port change that would leave a port with routes outside the group. @default true */
  refuseStranding?: boolean;
  /** Refuse to delete a group that still has routes. @default true */
  refuseDeleteInUse?: boolean;
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
    const { group, created } = await this.createOrGet(input);
    if (!created) throw new SfError(ErrorCode.RouterGroupExists, `name '${input.name}' is already taken`, 'name');
    return group;
  }

  /**
   * Creates a group, or returns the existing one of the same name and type unchanged (Cloud
   * Foundry answers such a create with 200 and the stored group). The same name with another type
   * is refused.
   */
  async createOrGet(input: RouterGroupInput): Promise<{ group: RouterGroup; created: boolean }> {
    const ranges = portsOf(input.type, input.reservable_ports);
    return withCasRetry<{ group: RouterGroup; created: boolean }>(async () => {
      const { version, groups } = await this.readAll();
      const same = groups.find((g) => g.name === input.name);
      if (same?.type === input.type) return { done: { group: same, created: false } };
      if (same) {
        throw new SfError(
          ErrorCode.RouterGroupExists,
          `name '${input.name}' is already taken by a ${same.type} router group`,
          'name',
        );
      }
      this.checkNoOverlap(ranges, groups);
      const group: RouterGroup = { guid: randomUUID(), ...input };
      return {
        guards: [{ key: this.keys.routerGroupsVersion, expected: version }],
        ops: [{ cmd: 'HSET', key: this.keys.routerGroups, field: group.guid, value: JSON.stringify(group) }],
        result: { group, created: true },
      };
    }, this.redis);
  }

  /**
   * Changes a group's ports; refused when they would overlap another group or (unless
   * `checks.refuseStranding` is false) strand a route. Unchanged ports are not validated again,
   * as in CF.
   */
  async update(
    guid: string,
    reservablePorts: string,
    portsInUse: (group: RouterGroup) => Promise<number[]>,
    checks: RouterGroupChecks = {},
  ): Promise<RouterGroup> {
    return withCasRetry<RouterGroup>(async () => {
      const { version, groups } = await this.readAll();
      const current = groups.find((g) => g.guid === guid);
      if (!current) throw new SfError(ErrorCode.NotFound, `guid '${guid}' names no router group`, 'guid');
      if (current.reservable_ports === reservablePorts) return { done: current };
      const ranges = portsOf(current.type, reservablePorts);
      this.checkNoOverlap(
        ranges,
        groups.filter((g) => g.guid !== guid),
      );
      const stranded =
        checks.refuseStranding === false
          ? undefined
          : (await portsInUse(current)).find((p) => !rangesContain(ranges, p));
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

  /** Deletes a group; an unknown guid is a 404, as in CF. */
  async delete(
    guid: string,
    portsInUse: (group: RouterGroup) => Promise<number[]>,
    checks: RouterGroupChecks = {},
  ): Promise<void> {
    await withCasRetry(async () => {
      const { version, groups } = await this.readAll();
      const current = groups.find((g) => g.guid === guid);
      if (!current) throw new SfError(ErrorCode.NotFound, `guid '${guid}' names no router group`, 'guid');
      if (checks.refuseDeleteInUse !== false && (await portsInUse(current)).length > 0) {
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
    // An `http` group has no ports; parsePortRanges gives it none.
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

/** A group's ports by CF's rules: `tcp` needs valid reservable ports, `http` may have none. */
function portsOf(type: RouterGroupType, text: string): PortRange[] {
  if (type === 'http') {
    if (text !== '') throw invalid('reservable_ports', 'are not supported for router groups of type http');
    return [];
  }
  if (text === '') throw invalid('reservable_ports', 'is required for a tcp router group');
  return parseReservablePorts(text);
}
