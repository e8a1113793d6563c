/**
 * Cloud Foundry's routing scopes, as UAA puts them in a token's `scope` claim (routing-api
 * handlers/scopes.go). Apart from the routes so the CLI can name them without loading the server.
 */
export const CF_ROUTING_SCOPES = {
  routesRead: 'routing.routes.read',
  routesWrite: 'routing.routes.write',
  routerGroupsRead: 'routing.router_groups.read',
  routerGroupsWrite: 'routing.router_groups.write',
} as const;

export const CF_ROUTING_SCOPE_NAMES: readonly string[] = Object.values(CF_ROUTING_SCOPES);
