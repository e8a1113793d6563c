/** What every role shares: the error registry, logging, the Redis connection, option merging, claiming a listening port and sizing its queue. */
export * from './bearer';
export * from './claim-port';
export * from './errors';
export * from './https-fetch';
export * from './listen-backlog';
export * from './logger';
export * from './options';
export * from './platform-ca';
export * from './process-metrics';
export * from './redis-connection';
export * from './redis-credentials';
