/**
 * One route port accepted in JS: its listening socket and the route bindings served on it. A port
 * normally carries one route; TLS ports may carry several told apart by the ClientHello's server
 * name (SNI), read without terminating TLS. Ports the addon accepts have no listener object
 * (router/native-port-table.ts).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { ErrorCode, SfError } from '../common';
import { acceptWithForwarders } from './accept-with-forwarder';
import { FORWARDERS_ENABLED } from './read-forwarder';
import { listenWithBacklog, openReusePortFd } from './reuseport';
import { clientTls, type Route } from '../protocol';
import { setListenerSocketOptions } from './proxied-connection';
import { RouteBinding, bindingKey, type ListenerEnvironment } from './route-binding';
import { hostMatches, parseClientHelloSni } from './sni';
import { jsPathReason } from './native-accept';

export class RouteListener {
  /** Routes on this port by binding key ('' = the port's default route). */
  readonly bindings = new Map<string, RouteBinding>();
  /** Bindings of routes that left this port while their connections drain. */
  readonly retiring = new Set<RouteBinding>();
  /** Clients on a shared TLS port whose server name matched no route (and no default route). */
  refusedUnknownServerName = 0;
  /**
   * Why this port is accepted in JS ('sni', 'proxy-protocol', 'tls', 'host-name', 'no-addon'),
   * decided when the port opens (router/native-accept.ts).
   */
  readonly jsReason: string;
  private readonly server: Server;
  private retired = false;
  /** The only binding, when the port has exactly one (kept with `bindings`). */
  private sole: RouteBinding | undefined;
  /** Marks the port as seen in the table being applied (Router.applyTable). */
  seen = 0;
  /** Accepted clients inherit TCP_NODELAY and keepalive from the listening socket. */
  private optionsInherited = false;

  constructor(
    readonly port: number,
    routes: Route[],
    private readonly env: ListenerEnvironment,
  ) {
    for (const route of routes) this.bindings.set(bindingKey(route), new RouteBinding(route, env));
    this.refreshSole();
    // A port whose routes no longer need JS stays on the JS path until it leaves the table.
    this.jsReason = (env.acceptor ? jsPathReason(routes) : 'no-addon') ?? 'opened-in-js';
    // pauseOnConnect keeps the client's first bytes in the kernel until a backend is connected
    // (and a PROXY header, if any, is written ahead of them).
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, this.onConnection);
  }

  listen(): Promise<void> {
    const server = this.server;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(
          new SfError(
            ErrorCode.ListenFailed,
            `cannot listen on ${this.env.bindHost}:${this.port}: ${err.code ?? err.message}`,
          ),
        );
      };
      server.once('error', onError);
      let fd: number | undefined;
      try {
        fd = this.env.reusePort
          ? openReusePortFd({ host: this.env.bindHost, port: this.port, backlog: this.env.backlog })
          : undefined;
      } catch (err) {
        onError(err as NodeJS.ErrnoException);
        return;
      }
      const where = fd !== undefined ? { fd } : { host: this.env.bindHost, port: this.port };
      listenWithBacklog(server, where, this.env.backlog, () => {
        // Only plain ports: a shared TLS port reads the ClientHello through 'data' events.
        if (FORWARDERS_ENABLED)
          acceptWithForwarders(
            server,
            // A route with TLS settings reads the client's first bytes through 'data' events.
            () => {
              const plain = this.plainBinding();
              return (
                this.env.relay.kind === 'js' && plain !== undefined && clientTls(plain.currentRoute()) === undefined
              );
            },
          );
        server.removeListener('error', onError);
        this.optionsInherited = setListenerSocketOptions(server, this.env.keepAliveMs);
        server.on('error', (err) => this.env.logger.error({ err, port: this.port }, 'listener error'));
        resolve();
      });
    });
  }

  /** The route of a port with a single route, the common case; undefined when it has several. */
  soleRoute(): Route | undefined {
    return this.sole?.currentRoute();
  }

  /**
   * True when `routes` are the very objects already served. Route sources keep unchanged route
   * objects across versions, so a one-route delta to a 10,000-route table touches one listener.
   */
  unchanged(routes: Route[]): boolean {
    if (routes.length !== this.bindings.size) return false;
    for (const route of routes) {
      if (this.bindings.get(bindingKey(route))?.currentRoute() !== route) return false;
    }
    return true;
  }

  /** The keys of the routes served on this port, to tell when a table adds or removes one. */
  bindingKeys(): string {
    return this.bindings.size === 1 ? [...this.bindings.keys()][0]! : [...this.bindings.keys()].sort().join('|');
  }

  /** The routes on this port in the new table; returns how many connections were fenced. */
  update(routes: Route[]): number {
    let killed = 0;
    const wanted = new Map(routes.map((r) => [bindingKey(r), r]));
    for (const [key, binding] of this.bindings) {
      if (wanted.has(key)) continue;
      this.bindings.delete(key);
      this.retiring.add(binding);
      binding.retire(() => this.retiring.delete(binding));
    }
    for (const [key, route] of wanted) {
      const binding = this.bindings.get(key);
      if (!binding) this.bindings.set(key, new RouteBinding(route, this.env));
      else if (binding.currentRoute() !== route) killed += binding.update(route);
    }
    this.refreshSole();
    return killed;
  }

  private refreshSole(): void {
    this.sole = this.bindings.size === 1 ? this.bindings.values().next().value : undefined;
  }

  /** The port left the table: stop accepting, drain every binding, then call `onGone`. */
  retire(onGone: () => void): void {
    this.retired = true;
    this.server.close();
    const all = [...this.bindings.values(), ...this.retiring];
    let left = all.length;
    if (left === 0) onGone();
    for (const b of all) b.retire(() => --left === 0 && onGone());
  }

  allBindings(): RouteBinding[] {
    return [...this.bindings.values(), ...this.retiring];
  }

  killAll(): void {
    for (const b of this.allBindings()) b.killAll();
  }

  close(): Promise<void> {
    this.retired = true;
    this.killAll();
    const server = this.server;
    return new Promise((resolve) => server.close(() => resolve()));
  }

  /** The single binding of a port without server names: the common case, with no sniffing. */
  private plainBinding(): RouteBinding | undefined {
    if (this.bindings.size !== 1) return undefined;
    return this.bindings.get('');
  }

  private readonly onConnection = (client: Socket): void => {
    if (this.retired || !this.env.serving()) {
      client.destroy();
      return;
    }
    const plain = this.plainBinding();
    if (plain) {
      plain.acceptClient(client, this.optionsInherited, this.env.clientHelloTimeoutMs);
      return;
    }
    this.readServerName(client);
  };

  /** Reads the ClientHello, picks the route by server name, and hands over what was read. */
  private readServerName(client: Socket): void {
    let buffered: Buffer = Buffer.alloc(0);
    const done = (serverName: string | undefined): void => {
      clearTimeout(timer);
      client.removeListener('data', onData);
      client.removeListener('error', onError);
      client.pause();
      const binding = this.bindingFor(serverName);
      if (!binding) {
        this.refusedUnknownServerName++;
        client.destroy();
        return;
      }
      binding.accept(client, buffered, this.optionsInherited);
    };
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const result = parseClientHelloSni(buffered);
      if (result.kind === 'need-more') return;
      done(result.kind === 'done' ? result.serverName : undefined);
    };
    const onError = (): void => {
      clearTimeout(timer);
      client.destroy();
    };
    const timer = setTimeout(() => {
      this.refusedUnknownServerName++;
      client.destroy();
    }, this.env.clientHelloTimeoutMs);
    client.on('data', onData);
    client.on('error', onError);
    client.resume();
  }

  private bindingFor(serverName: string | undefined): RouteBinding | undefined {
    if (serverName) {
      for (const binding of this.bindings.values()) {
        const names = binding.currentRoute().sni;
        if (names?.some((n) => hostMatches(n, serverName))) return binding;
      }
    }
    return this.bindings.get('');
  }
}
