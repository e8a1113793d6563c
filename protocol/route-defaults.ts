/** Constants of the route model that need no schema library, for code that must load fast (the CLI). */
export const DEFAULT_ROUTER_GROUP = 'default';
