/**
 * What the processes agree on: the route model and its push protocol, the cell protocol, the
 * lease scripts, and the one key layout where every Redis key takes the installation's prefix.
 */
export * from './keys';
export * from './route-defaults';
export * from './route-model';
export * from './route-push-protocol';
export * from './cell-protocol';
export * from './lease';
export * from './cell-heartbeat';
export * from './acl';
