/**
 * The event feeds: server-sent events at `/routing/v1/tcp_routes/events` (CF's `Upsert`/`Delete`
 * event names, the record as data) and the same events as JSON messages on the `/v3/events`
 * WebSocket (`{"type": "Upsert", "route": {...}}`).
 */
import type { EventHub } from '../events/event-hub';
import type { HttpServer } from './http-server';
import { CF_ROUTING_SCOPES } from './cf-scopes';

const WS_TOPIC = 'route-events';

export function registerEventsApi(server: HttpServer, hub: EventHub): () => void {
  server.stream(
    '/routing/v1/tcp_routes/events',
    'read',
    (sink) => {
      const unsubscribe = hub.subscribe((event, id) => sink.send(event.type, JSON.stringify(event.route), String(id)));
      sink.onClose(unsubscribe);
    },
    CF_ROUTING_SCOPES.routesRead,
  );
  server.websocket('/v3/events', 'read', { topics: [WS_TOPIC] });
  // One hub listener feeds every WebSocket through uWS's topic fan-out.
  return hub.subscribe((event) => server.publish(WS_TOPIC, JSON.stringify(event)));
}
