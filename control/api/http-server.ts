/**
 * A tiny JSON router over uWebSockets.js: routes with `:params`, bearer-token scopes, bodies read
 * with a size limit, one error shape, and server-sent event streams and WebSockets for the event
 * feeds. uWS rules it follows: the request object is read synchronously before the first await,
 * `onAborted` is always attached, and every write after an await is corked and skipped when the
 * client has gone.
 */
import * as uws from '@trufflesuite/uws-js-unofficial';
import { ErrorCode, SfError, errorBody, httpStatusFor } from '../../common/errors';
import { withDefaults } from '../../common/options';
import { hasScope, type Authenticator, type Principal, type Scope } from './auth';

export interface HttpServerOptions {
  authenticator: Authenticator;
  /** @default 1048576 bytes (1 MiB): large enough for thousands of routes in one request */
  bodyLimitBytes?: number;
  /** Called with errors that become 500 responses, for the log. */
  onInternalError?: (err: unknown, method: string, path: string) => void;
}

export const DEFAULT_HTTP_SERVER_OPTIONS = { bodyLimitBytes: 1024 * 1024 } as const;

export type HttpMethod = 'get' | 'post' | 'put' | 'del';

export interface RequestContext {
  method: string;
  path: string;
  params: Readonly<Record<string, string>>;
  query: URLSearchParams;
  /** Null only on routes that need no scope. */
  principal: Principal | null;
  /** The parsed JSON body; rejects with SF_ERR_INVALID_JSON or SF_ERR_BODY_TOO_LARGE. */
  body(): Promise<unknown>;
}

export interface JsonReply {
  /** @default 200 */
  status?: number;
  body?: unknown;
}

export type JsonHandler = (ctx: RequestContext) => Promise<JsonReply>;

/** An open server-sent event stream. */
export interface EventStreamSink {
  send(event: string, data: string, id?: string): void;
  close(): void;
  onClose(cb: () => void): void;
}

export type StreamHandler = (sink: EventStreamSink, ctx: RequestContext) => void;

export interface WebSocketHooks {
  /** Topics the socket joins on open; publish() reaches them. */
  topics: string[];
}

const REASONS: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  204: 'No Content',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Payload Too Large',
  422: 'Unprocessable Entity',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** A slow event consumer is cut off after this many writes uWS had to buffer. */
const MAX_BACKPRESSURED_WRITES = 1_000;

/** Idle event streams get a comment line this often, so proxies and NATs keep them open. */
const STREAM_KEEPALIVE_MS = 15_000;

interface RequestState {
  aborted: boolean;
  done: boolean;
}

interface CapturedRequest {
  method: string;
  path: string;
  params: Record<string, string>;
  query: URLSearchParams;
  authorization: string;
  contentLength: number;
}

export class HttpServer {
  private readonly app: uws.TemplatedApp;
  private readonly opts: Required<Omit<HttpServerOptions, 'onInternalError'>> &
    Pick<HttpServerOptions, 'onInternalError'>;
  private listenSocket: uws.us_listen_socket | null = null;
  private readonly streams = new Set<EventStreamSink>();
  private fallbackInstalled = false;

  constructor(options: HttpServerOptions) {
    this.opts = withDefaults(DEFAULT_HTTP_SERVER_OPTIONS, options);
    this.app = uws.App();
  }

  /** Registers a JSON endpoint; `scope` null means no token is needed. */
  route(method: HttpMethod, pattern: string, scope: Scope | null, handler: JsonHandler): this {
    const names = paramNames(pattern);
    this.app[method](pattern, (res, req) => {
      const state = this.watch(res);
      const captured = capture(req, names);
      const body = method === 'get' ? null : this.readBody(res, state, captured.contentLength);
      void this.run(res, state, captured, scope, body, handler);
    });
    return this;
  }

  /** Registers a server-sent event stream (`text/event-stream`). */
  stream(pattern: string, scope: Scope, handler: StreamHandler): this {
    const names = paramNames(pattern);
    this.app.get(pattern, (res, req) => {
      const state = this.watch(res);
      const captured = capture(req, names);
      void this.openStream(res, state, captured, scope, handler);
    });
    return this;
  }

  /** Registers a WebSocket endpoint whose sockets receive what is published to `topics`. */
  websocket(pattern: string, scope: Scope, hooks: WebSocketHooks): this {
    this.app.ws<{ principal: Principal }>(pattern, {
      idleTimeout: 60,
      sendPingsAutomatically: true,
      maxPayloadLength: 4 * 1024,
      upgrade: (res, req, context) => {
        const state = this.watch(res);
        const captured = capture(req, []);
        const key = req.getHeader('sec-websocket-key');
        const protocol = req.getHeader('sec-websocket-protocol');
        const extensions = req.getHeader('sec-websocket-extensions');
        void this.authorize(captured, scope)
          .then((principal) => {
            if (state.aborted) return;
            res.cork(() => res.upgrade({ principal }, key, protocol, extensions, context));
          })
          .catch((err: unknown) => this.reply(res, state, httpStatusFor(err), errorBody(err)));
      },
      open: (ws) => {
        for (const topic of hooks.topics) ws.subscribe(topic);
      },
    });
    return this;
  }

  publish(topic: string, message: string): void {
    this.app.publish(topic, message);
  }

  async listen(host: string, port: number): Promise<number> {
    if (!this.fallbackInstalled) {
      this.fallbackInstalled = true;
      this.app.any('/*', (res, req) => {
        const state = this.watch(res);
        const err = new SfError(ErrorCode.NotFound, `no endpoint ${req.getMethod().toUpperCase()} ${req.getUrl()}`);
        this.reply(res, state, 404, errorBody(err));
      });
    }
    return new Promise((resolve, reject) => {
      this.app.listen(host, port, (socket) => {
        if (!socket) {
          reject(new SfError(ErrorCode.ListenFailed, `cannot listen on ${host}:${port}`, 'listen'));
          return;
        }
        this.listenSocket = socket;
        resolve(uws.us_socket_local_port(socket as unknown as uws.us_socket));
      });
    });
  }

  /** Stops listening and closes every open stream and socket. */
  close(): void {
    if (this.listenSocket) uws.us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
    for (const s of [...this.streams]) s.close();
    // `close()` exists on the app at runtime (it closes every socket) but not in the typings.
    (this.app as unknown as { close?: () => void }).close?.();
  }

  private watch(res: uws.HttpResponse): RequestState {
    const state: RequestState = { aborted: false, done: false };
    res.onAborted(() => {
      state.aborted = true;
    });
    return state;
  }

  private async authorize(req: CapturedRequest, scope: Scope | null): Promise<Principal | null> {
    if (scope === null) return null;
    const m = /^Bearer\s+(\S+)$/i.exec(req.authorization);
    // Browsers cannot set headers on EventSource or WebSocket, hence the query parameter.
    const token = m?.[1] ?? req.query.get('access_token');
    if (!token) throw new SfError(ErrorCode.Unauthorized, 'a bearer token is required', 'authorization');
    const principal = await this.opts.authenticator.authenticate(token);
    if (!principal) throw new SfError(ErrorCode.Unauthorized, 'the bearer token is not valid', 'authorization');
    if (!hasScope(principal, scope)) {
      throw new SfError(ErrorCode.Forbidden, `this endpoint needs the '${scope}' scope`, 'authorization');
    }
    return principal;
  }

  private async run(
    res: uws.HttpResponse,
    state: RequestState,
    req: CapturedRequest,
    scope: Scope | null,
    body: Promise<Buffer> | null,
    handler: JsonHandler,
  ): Promise<void> {
    // A rejected body must not become an unhandled rejection when auth fails first.
    body?.catch(() => undefined);
    try {
      const principal = await this.authorize(req, scope);
      const ctx: RequestContext = {
        method: req.method,
        path: req.path,
        params: req.params,
        query: req.query,
        principal,
        body: async () => parseJson(body ? await body : Buffer.alloc(0)),
      };
      const reply = await handler(ctx);
      this.reply(res, state, reply.status ?? 200, reply.body);
    } catch (err) {
      const status = httpStatusFor(err);
      if (status === 500) this.opts.onInternalError?.(err, req.method, req.path);
      this.reply(res, state, status, errorBody(err));
    }
  }

  private readBody(res: uws.HttpResponse, state: RequestState, declared: number): Promise<Buffer> {
    const limit = this.opts.bodyLimitBytes;
    return new Promise((resolve, reject) => {
      const tooLarge = () => new SfError(ErrorCode.BodyTooLarge, `the request body exceeds ${limit} bytes`, 'body');
      if (declared > limit) {
        reject(tooLarge());
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.onData((chunk, isLast) => {
        if (state.done) return;
        size += chunk.byteLength;
        if (size > limit) {
          // Stop buffering at once; the error reply closes the connection.
          chunks.length = 0;
          state.done = true;
          reject(tooLarge());
          return;
        }
        // uWS reuses the chunk's memory after this callback returns, so it is copied.
        chunks.push(Buffer.from(chunk.slice(0)));
        if (isLast) resolve(Buffer.concat(chunks));
      });
    });
  }

  private reply(res: uws.HttpResponse, state: RequestState, status: number, body: unknown): void {
    if (state.aborted) return;
    state.aborted = true; // One reply per request.
    // After an oversized body the rest of it is still in flight, so the connection must go.
    const closeConnection = status === 413;
    res.cork(() => {
      res.writeStatus(`${status} ${REASONS[status] ?? ''}`.trimEnd());
      if (body === undefined || status === 204) {
        res.end(undefined, closeConnection);
        return;
      }
      res.writeHeader('content-type', 'application/json').end(JSON.stringify(body), closeConnection);
    });
  }

  private async openStream(
    res: uws.HttpResponse,
    state: RequestState,
    req: CapturedRequest,
    scope: Scope,
    handler: StreamHandler,
  ): Promise<void> {
    let principal: Principal | null;
    try {
      principal = await this.authorize(req, scope);
    } catch (err) {
      this.reply(res, state, httpStatusFor(err), errorBody(err));
      return;
    }
    if (state.aborted) return;
    const closers: Array<() => void> = [];
    let closed = false;
    let backpressured = 0;
    const keepalive = setInterval(() => {
      if (!closed) res.cork(() => res.write(': keep-alive\n\n'));
    }, STREAM_KEEPALIVE_MS);
    keepalive.unref();
    const finish = (end: boolean) => {
      if (closed) return;
      closed = true;
      clearInterval(keepalive);
      this.streams.delete(sink);
      if (end && !state.aborted) res.cork(() => res.end());
      state.aborted = true;
      for (const cb of closers) cb();
    };
    const sink: EventStreamSink = {
      send: (event, data, id) => {
        if (closed) return;
        const frame = `${id ? `id: ${id}\n` : ''}event: ${event}\ndata: ${data}\n\n`;
        res.cork(() => {
          if (!res.write(frame)) backpressured++;
          else backpressured = 0;
        });
        if (backpressured > MAX_BACKPRESSURED_WRITES) finish(true);
      },
      close: () => finish(true),
      onClose: (cb) => closers.push(cb),
    };
    res.onAborted(() => finish(false));
    this.streams.add(sink);
    res.cork(() => {
      res
        .writeStatus('200 OK')
        .writeHeader('content-type', 'text/event-stream')
        .writeHeader('cache-control', 'no-cache')
        .write(': connected\n\n');
    });
    handler(sink, {
      method: req.method,
      path: req.path,
      params: req.params,
      query: req.query,
      principal,
      body: async () => undefined,
    });
  }
}

function paramNames(pattern: string): string[] {
  return pattern
    .split('/')
    .filter((part) => part.startsWith(':'))
    .map((part) => part.slice(1));
}

function capture(req: uws.HttpRequest, names: string[]): CapturedRequest {
  const params: Record<string, string> = {};
  names.forEach((name, i) => (params[name] = decodeURIComponent(req.getParameter(i))));
  const length = Number(req.getHeader('content-length') || 0);
  return {
    method: req.getMethod().toUpperCase(),
    path: req.getUrl(),
    params,
    query: new URLSearchParams(req.getQuery() ?? ''),
    authorization: req.getHeader('authorization'),
    contentLength: Number.isFinite(length) ? length : 0,
  };
}

function parseJson(buf: Buffer): unknown {
  if (buf.length === 0) throw new SfError(ErrorCode.InvalidJson, 'body must be a JSON document', 'body');
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new SfError(ErrorCode.InvalidJson, `body is not valid JSON: ${(err as Error).message}`, 'body');
  }
}
