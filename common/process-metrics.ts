/**
 * Settings of prom-client's Node process metrics, the same in every role. Its event-loop delay
 * histogram samples with a timer every 10 ms by default: a hundred wake-ups a second of an idle
 * process (an idle router spent about 1.5 % of a core, 1.0 % with 100 ms). 100 ms still catches
 * every stall worth an alert.
 */
export const PROCESS_METRICS_SETTINGS = { eventLoopMonitoringPrecision: 100 };
