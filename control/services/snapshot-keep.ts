/** How many snapshots of a service retention keeps unless the service or the request says otherwise. */
export const DEFAULT_SNAPSHOT_KEEP = 7;
/** The largest retention a service or a request may ask for. */
export const MAX_SNAPSHOT_KEEP = 1000;
