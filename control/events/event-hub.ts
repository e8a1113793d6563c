/**
 * Route events (Upsert/Delete, as in Cloud Foundry's routing API) fanned out to local streams.
 * Events travel through a Redis channel written in the same script as the change, so every
 * control process sees every change — including expiries swept by another control.
 */
import { type Redis } from 'ioredis';
import { createRedis } from '../../common';
import type { RouteEvent } from '../state/tcp-route-types';

export type RouteEventListener = (event: RouteEvent, id: number) => void;

export class EventHub {
  private readonly listeners = new Set<RouteEventListener>();
  private sub: Redis | null = null;
  private nextId = 1;

  constructor(
    private readonly redisUrl: string,
    private readonly channel: string,
    private readonly onError: (err: Error) => void = () => undefined,
  ) {}

  async start(): Promise<void> {
    // A subscribed connection can run nothing else, hence a connection of its own.
    this.sub = createRedis(this.redisUrl, { connectionName: 'sf-control:events', maxRetriesPerRequest: null });
    this.sub.on('error', (err: Error) => this.onError(err));
    this.sub.on('message', (_channel: string, message: string) => this.dispatch(message));
    await this.sub.subscribe(this.channel);
  }

  /** True while the subscription to the event channel is up (for `/health`). */
  connected(): boolean {
    return this.sub?.status === 'ready';
  }

  /** Adds a listener; returns the function that removes it. */
  subscribe(listener: RouteEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async stop(): Promise<void> {
    this.listeners.clear();
    this.sub?.disconnect();
    this.sub = null;
  }

  private dispatch(message: string): void {
    let events: RouteEvent[];
    try {
      events = JSON.parse(message) as RouteEvent[];
    } catch (err) {
      this.onError(err as Error);
      return;
    }
    if (!Array.isArray(events)) {
      this.onError(new Error('event message is not a JSON array'));
      return;
    }
    for (const event of events) {
      const id = this.nextId++;
      for (const listener of [...this.listeners]) {
        try {
          listener(event, id);
        } catch (err) {
          // One consumer's failure must not cost the others their events.
          this.onError(err as Error);
        }
      }
    }
  }
}
