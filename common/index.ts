/** What every role shares: the error registry, logging, the Redis connection, option merging and claiming a listening port. */
export * from './bearer';
export * from './claim-port';
export * from './errors';
export * from './https-fetch';
export * from './logger';
export * from './options';
export * from './platform-ca';
export * from './process-metrics';
export * from './redis-connection';
export * from './redis-credentials';
