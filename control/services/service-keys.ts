/** Control-owned Redis keys of the service plane (docs/services.md lists them). */

export interface ServiceKeys {
  /** Hash: service name -> ServiceRecord JSON. */
  services: string;
  /** String: version guarding every write of `services` (optimistic concurrency). */
  servicesVersion: string;
  /** Pub/sub: a service changed and the leader should look at it now. */
  servicesChanged: string;
  /** Pub/sub channel of ServiceEvent JSON. */
  events: string;
  /** List: the last service events, newest first. */
  eventLog: string;
  /** String: `${holderId}|${token}` with a PX TTL, the leader lock. */
  leaderLock: string;
  /** String: the fencing token counter; INCRed by every acquisition of the lock. */
  leaderToken: string;
}

export function serviceKeys(prefix = 'sf:'): ServiceKeys {
  return {
    services: `${prefix}services`,
    servicesVersion: `${prefix}services:version`,
    servicesChanged: `${prefix}services:changed`,
    events: `${prefix}service-events`,
    eventLog: `${prefix}service-events:log`,
    leaderLock: `${prefix}leader`,
    leaderToken: `${prefix}leader:token`,
  };
}
