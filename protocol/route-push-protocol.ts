/**
 * The Redis push protocol between control (the only writer) and routers (readers): the delta
 * message and the heartbeat record (key names are in keys.ts). It lives next to the route model because both
 * sides depend on it and the router must not import control (DESIGN.md, "Dependencies point
 * one way"). docs/control-api.md describes the layout for operators.
 */
import type { Route } from './route-model';

/** One committed change of a router group's table; `version` is the version it produces. */
export interface RouteDelta {
  version: number;
  /** Whole routes that were added or changed, in the router's shape. */
  upserts: Route[];
  /** Ports whose routes were removed. */
  deletes: number[];
}

/** What a router writes under its heartbeat key: who it is and which version it serves. */
export interface RouterHeartbeat {
  routerId: string;
  routerGroup: string;
  version: number;
  /** Whether both Redis connections were up when the heartbeat was written. */
  connected: boolean;
  /** Epoch milliseconds of the heartbeat. */
  at: number;
  /** Ports of the applied table this router could not open (first 100); absent when none. */
  failedPorts?: Array<{ port: number; reason: string }>;
}
