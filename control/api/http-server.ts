/**
 * A tiny JSON router over uWebSockets.js: routes with `:params`, bearer-token scopes, bodies read
 * with a size limit, one error shape, and server-sent event streams and WebSockets for the event
 * feeds. uWS rules it follows: the request object is read synchronously before the first await,
 * `onAborted` is always attached, and every write after an await is corked and skipped when the
 * client has gone.
 *
 * Nothing a client sends may stop the process (a malformed percent-encoding
 * in a path parameter threw out of a uWS callback and control exited). Every callback this file
 * hands to uWS is wrapped, so a throw, sync or async, before or after authentication, becomes an
 * error reply with the registry's body, and every promise it starts has a rejection handler.
 */
import type * as uws from '@trufflesuite/uws-js-unofficial';
import { ErrorCode, SfError, errorBody, httpStatusFor, type ErrorBody, withDefaults } from '../../common';
import { DEFAULT_CONTROL_API_OPTIONS } from './api-options';
import { hasScope, type Authenticator, type Principal, type Scope } from './auth';
import { CF_ROUTING_PATH_PREFIX, cfErrorReply } from './cf-errors';
import { ReloadableApp, type HttpsFiles } from './reloadable-app';

export interface HttpServerOptions {
  authenticator: Authenticator;
  /** @default 1048576 bytes (1 MiB): large enough for thousands of routes in one request */
  bodyLimitBytes?: number;
  /**
   * Longest request target (path and query) in bytes; longer ones get 414. uWS itself drops a
   * connection whose request head exceeds about 128 KiB, without an answer.
   * @default 8192
   */
  maxUrlBytes?: number;
  /**
   * Largest sum of header names and values in bytes; more gets 431. uWS itself drops a request
   * with more than about 50 header lines, without an answer.
   * @default 16384
   */
  maxHeaderBytes?: number;
  /**
   * How far (bytes queued and not yet taken by the client) an event-stream or WebSocket consumer
   * may fall behind before it is disconnected with a reason; never are events silently dropped.
   * @default 1048576
   */
  eventBacklogLimitBytes?: number;
  /**
   * Serve HTTPS with this certificate and key (PEM files, docs/tls.md); `reloadTls` serves a
   * renewed pair to new connections without a restart. @default none (plain HTTP)
   */
  tls?: { certFile: string; keyFile: string };
  /** Called with errors that become 500 responses, for the log. */
  onInternalError?: (err: unknown, method: string, path: string) => void;
  /** Called once for every write request (any method but GET) after its reply, for the audit log. */
  onWrite?: (record: WriteRecord) => void;
  /**
   * Answer errors under `/routing/v1/` in Cloud Foundry's shape and statuses (cf-errors.ts).
   * @default true
   */
  cfRoutingErrors?: boolean;
}

export const DEFAULT_HTTP_SERVER_OPTIONS = {
  bodyLimitBytes: 1024 * 1024,
  maxUrlBytes: DEFAULT_CONTROL_API_OPTIONS.maxUrlBytes,
  maxHeaderBytes: DEFAULT_CONTROL_API_OPTIONS.maxHeaderBytes,
  eventBacklogLimitBytes: DEFAULT_CONTROL_API_OPTIONS.eventBacklogLimitBytes,
  cfRoutingErrors: true,
} as const;

export type HttpMethod = 'get' | 'post' | 'put' | 'patch' | 'del';

export interface RequestContext {
  method: string;
  path: string;
  params: Readonly<Record<string, string>>;
  query: URLSearchParams;
  /** Null only on routes that need no scope. */
  principal: Principal | null;
  /** The raw Authorization header, so a standby can forward an action to the leader as its sender. */
  authorization?: string;
  /** The Prefer header (RFC 7240), e.g. `return=representation`; empty when absent. */
  prefer: string;
  /** The parsed JSON body; rejects with SF_ERR_INVALID_JSON or SF_ERR_BODY_TOO_LARGE. */
  body(): Promise<unknown>;
}

export interface JsonReply {
  /** @default 200 */
  status?: number;
  body?: unknown;
  /** Extra response headers (Cloud Foundry's `X-Cf-Warnings`). */
  headers?: Record<string, string>;
  /** Sent as is instead of `body` as JSON: metrics text, the console's files. */
  raw?: RawBody;
}

export interface RawBody {
  contentType: string;
  data: string | Uint8Array;
  /** Extra response headers (caching, security policy). */
  headers?: Record<string, string>;
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

/** What the audit log records of one write request. The token itself is never part of it. */
export interface WriteRecord {
  /** Epoch ms when the reply was sent. */
  at: number;
  method: string;
  /** The path without the query string, at most 512 characters. */
  path: string;
  /** Who sent it; null when no valid token came with the request. */
  principal: Principal | null;
  status: number;
  /** The error code of a refused or failed request, null on success. */
  code: string | null;
}

/** One registered endpoint, as `endpoints()` lists them (tests probe every one). */
export interface EndpointInfo {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  pattern: string;
  scope: Scope | null;
  /** The Cloud Foundry scope a JWT must carry here (routing API endpoints only). */
  cfScope?: string;
  kind: 'json' | 'stream' | 'websocket';
}

/** The SSE event a lagging consumer gets last, telling it to re-read state and reconnect. */
export const RESYNC_EVENT = 'resync';

/**
 * WebSocket close code for a consumer that fell behind: 1008 (policy violation, RFC 6455 §7.4.1),
 * with the reason text starting with `resync`.
 */
export const SLOW_CONSUMER_CLOSE_CODE = 1008;
export const SLOW_CONSUMER_REASON = 'resync: event consumer fell behind; re-read state and reconnect';

const REASONS: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  202: 'Accepted',
  204: 'No Content',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Payload Too Large',
  414: 'URI Too Long',
  422: 'Unprocessable Entity',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** Idle event streams get a comment line this often, so proxies and NATs keep them open. */
const STREAM_KEEPALIVE_MS = 15_000;

/** No name, guid or id of the API is this long; longer path parameters are refused, not echoed. */
const MAX_PARAM_CHARS = 256;

/** Error messages and audited paths are cut here, so nothing a client sends comes back at length. */
const MAX_MESSAGE_CHARS = 300;
const MAX_AUDIT_PATH_CHARS = 512;

/** Deeper JSON than this is refused before a validator walks it recursively. */
const MAX_JSON_DEPTH = 64;

/** Our tokens are 27 characters, UAA's JWTs a few kilobytes; a larger one is refused unread. */
const MAX_TOKEN_CHARS = 8192;

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
  prefer: string;
  contentLength: number;
}

interface Limits {
  maxUrlBytes: number;
  maxHeaderBytes: number;
}

interface SocketData {
  principal: Principal | null;
  topics: string[];
  closed: boolean;
}

type ServerOptions = Required<Omit<HttpServerOptions, 'onInternalError' | 'onWrite' | 'tls'>> &
  Pick<HttpServerOptions, 'onInternalError' | 'onWrite' | 'tls'>;

export class HttpServer {
  private readonly app: ReloadableApp;
  private readonly opts: ServerOptions;
  private readonly streams = new Set<EventStreamSink>();
  private readonly subscribers = new Map<string, Set<uws.WebSocket<SocketData>>>();
  private readonly registered: EndpointInfo[] = [];
  private fallbackInstalled = false;

  constructor(options: HttpServerOptions) {
    this.opts = withDefaults(DEFAULT_HTTP_SERVER_OPTIONS, options);
    this.app = new ReloadableApp(options.tls);
  }

  /** Every endpoint registered so far, in registration order. */
  endpoints(): EndpointInfo[] {
    return this.registered.map((e) => ({ ...e }));
  }

  /**
   * Registers a JSON endpoint; `scope` null means no token is needed. `cfScope` is the Cloud
   * Foundry scope a JWT needs here instead of `scope` (routing API endpoints).
   */
  route(method: HttpMethod, pattern: string, scope: Scope | null, handler: JsonHandler, cfScope?: string): this {
    const names = paramNames(pattern);
    this.registered.push({ method: METHOD_NAMES[method], pattern, scope, cfScope, kind: 'json' });
    const handle = (res: uws.HttpResponse, req: uws.HttpRequest): void => {
      const state = this.watch(res);
      let captured: CapturedRequest;
      try {
        captured = capture(req, names, this.opts);
      } catch (err) {
        this.refuseEarly(res, state, err, req, method !== 'get');
        return;
      }
      try {
        const body = method === 'get' ? null : this.readBody(res, state, captured.contentLength);
        this.run(res, state, captured, { scope, cfScope }, body, handler).catch((err: unknown) =>
          this.lastResort(res, state, err, captured),
        );
      } catch (err) {
        this.lastResort(res, state, err, captured);
      }
    };
    this.app.register((app) => app[method](pattern, handle));
    return this;
  }

  /** Registers a server-sent event stream (`text/event-stream`). */
  stream(pattern: string, scope: Scope, handler: StreamHandler, cfScope?: string): this {
    const names = paramNames(pattern);
    this.registered.push({ method: 'GET', pattern, scope, cfScope, kind: 'stream' });
    const handle = (res: uws.HttpResponse, req: uws.HttpRequest): void => {
      const state = this.watch(res);
      let captured: CapturedRequest;
      try {
        captured = capture(req, names, this.opts);
      } catch (err) {
        this.refuseEarly(res, state, err, req, false);
        return;
      }
      this.openStream(res, state, captured, { scope, cfScope }, handler).catch((err: unknown) =>
        this.lastResort(res, state, err, captured),
      );
    };
    this.app.register((app) => app.get(pattern, handle));
    return this;
  }

  /** Registers a WebSocket endpoint whose sockets receive what is published to `topics`. */
  websocket(pattern: string, scope: Scope, hooks: WebSocketHooks): this {
    this.registered.push({ method: 'GET', pattern, scope, kind: 'websocket' });
    const limit = this.opts.eventBacklogLimitBytes;
    const behavior: uws.WebSocketBehavior<SocketData> = {
      idleTimeout: 60,
      sendPingsAutomatically: true,
      maxPayloadLength: 4 * 1024,
      // uWS drops (status 2) a message once this much is buffered. publish() disconnects a socket
      // as soon as it is `limit` behind, so this only has to sit above that plus one message.
      maxBackpressure: 2 * limit + 1024 * 1024,
      closeOnBackpressureLimit: 0,
      upgrade: (res, req, context) => {
        const state = this.watch(res);
        let captured: CapturedRequest;
        let key: string, protocol: string, extensions: string;
        try {
          captured = capture(req, [], this.opts);
          key = req.getHeader('sec-websocket-key');
          protocol = req.getHeader('sec-websocket-protocol');
          extensions = req.getHeader('sec-websocket-extensions');
        } catch (err) {
          this.refuseEarly(res, state, err, req, false);
          return;
        }
        this.authorize(captured, { scope }, true)
          .then((principal) => {
            if (state.aborted) return;
            state.aborted = true;
            res.cork(() =>
              res.upgrade<SocketData>(
                { principal, topics: hooks.topics, closed: false },
                key,
                protocol,
                extensions,
                context,
              ),
            );
          })
          .catch((err: unknown) => this.replyError(res, state, err, captured));
      },
      open: (ws) => {
        for (const topic of ws.getUserData().topics) {
          let set = this.subscribers.get(topic);
          if (!set) this.subscribers.set(topic, (set = new Set()));
          set.add(ws);
        }
      },
      close: (ws) => {
        const data = ws.getUserData();
        data.closed = true;
        for (const topic of data.topics) this.subscribers.get(topic)?.delete(ws);
      },
    };
    this.app.register((app) => app.ws<SocketData>(pattern, behavior));
    return this;
  }

  /**
   * Sends `message` to every WebSocket on `topic`. A socket that is more than the backlog limit
   * behind is closed with SLOW_CONSUMER_CLOSE_CODE and a reason instead of losing messages
   * (uWS's own topic fan-out drops them silently past its backpressure limit).
   */
  publish(topic: string, message: string): void {
    const set = this.subscribers.get(topic);
    if (!set) return;
    for (const ws of [...set]) {
      const data = ws.getUserData();
      if (data.closed) {
        set.delete(ws);
        continue;
      }
      try {
        const status = ws.send(message, false);
        if (status === 2 || ws.getBufferedAmount() > this.opts.eventBacklogLimitBytes) {
          set.delete(ws);
          data.closed = true;
          ws.end(SLOW_CONSUMER_CLOSE_CODE, SLOW_CONSUMER_REASON);
        }
      } catch {
        // The socket closed under us; its close handler has removed it or is about to.
        set.delete(ws);
        data.closed = true;
      }
    }
  }

  async listen(host: string, port: number): Promise<number> {
    if (!this.fallbackInstalled) {
      this.fallbackInstalled = true;
      const handle = (res: uws.HttpResponse, req: uws.HttpRequest): void => {
        const state = this.watch(res);
        try {
          const captured = capture(req, [], this.opts);
          const err = new SfError(
            ErrorCode.NotFound,
            `no endpoint ${captured.method} ${shorten(captured.path, 100)}`,
            'path',
          );
          this.replyError(res, state, err, captured);
          this.audit(captured, null, 404, err.code);
        } catch (err) {
          this.refuseEarly(res, state, err, req, true);
        }
      };
      this.app.register((app) => app.any('/*', handle));
    }
    return this.app.listen(host, port);
  }

  /**
   * Serves a renewed certificate and key to new connections; open ones keep theirs. A pair that
   * does not load is refused and the current one stays in force (reloadable-app.ts).
   */
  reloadTls(files: HttpsFiles): Promise<void> {
    return this.app.reload(files);
  }

  /** Stops listening and closes every open stream and socket. */
  close(): void {
    for (const s of [...this.streams]) s.close();
    this.subscribers.clear();
    this.app.close();
  }

  private watch(res: uws.HttpResponse): RequestState {
    const state: RequestState = { aborted: false, done: false };
    res.onAborted(() => {
      state.aborted = true;
    });
    return state;
  }

  /**
   * The principal for a request that needs `scope`. `?access_token=` is accepted only where
   * `allowQueryToken` (GET event streams: EventSource and browser WebSockets cannot set headers);
   * anywhere else a token in the URL is refused, since URLs end up in logs and shell histories.
   */
  private async authorize(req: CapturedRequest, need: Need, allowQueryToken: boolean): Promise<Principal | null> {
    const principal = await this.authenticate(req, need.scope, allowQueryToken);
    if (principal) requireScope(principal, need);
    return principal;
  }

  /** Who sent the request (401 unless a valid token came with it); null where no scope is needed. */
  private async authenticate(
    req: CapturedRequest,
    scope: Scope | null,
    allowQueryToken: boolean,
  ): Promise<Principal | null> {
    if (scope === null) return null;
    let token: string | null = null;
    if (req.authorization) {
      const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(req.authorization);
      if (!m) {
        throw new SfError(ErrorCode.Unauthorized, "the Authorization header must be 'Bearer TOKEN'", 'authorization');
      }
      token = m[1];
    }
    const queryToken = req.query.get('access_token');
    if (queryToken !== null && !allowQueryToken) {
      throw new SfError(
        ErrorCode.Unauthorized,
        'access_token in the URL is accepted only on GET event streams; send Authorization: Bearer TOKEN',
        'access_token',
      );
    }
    token ??= queryToken;
    if (!token) throw new SfError(ErrorCode.Unauthorized, 'a bearer token is required', 'authorization');
    const principal = token.length > MAX_TOKEN_CHARS ? null : await this.opts.authenticator.authenticate(token);
    if (!principal) throw new SfError(ErrorCode.Unauthorized, 'the bearer token is not valid', 'authorization');
    return principal;
  }

  private async run(
    res: uws.HttpResponse,
    state: RequestState,
    req: CapturedRequest,
    need: Need,
    body: Promise<Buffer> | null,
    handler: JsonHandler,
  ): Promise<void> {
    // A rejected body must not become an unhandled rejection when auth fails first.
    body?.catch(() => undefined);
    let principal: Principal | null = null;
    let status: number;
    let code: string | null;
    try {
      // Authenticated and scope-checked apart, so a refused write is audited with its sender.
      principal = await this.authenticate(req, need.scope, false);
      if (principal) requireScope(principal, need);
      const ctx: RequestContext = {
        method: req.method,
        path: req.path,
        params: req.params,
        query: req.query,
        principal,
        authorization: req.authorization,
        prefer: req.prefer,
        body: async () => parseJson(body ? await body : Buffer.alloc(0)),
      };
      const reply = await handler(ctx);
      status = reply.status ?? 200;
      code = errorCodeIn(reply.body);
      if (reply.raw) this.replyRaw(res, state, status, reply.raw);
      else this.reply(res, state, status, reply.body, false, reply.headers);
    } catch (err) {
      const answer = this.errorAnswer(req.path, err);
      status = answer.status;
      code = errorBody(err).error.code;
      if (httpStatusFor(err) === 500) this.opts.onInternalError?.(err, req.method, req.path);
      this.reply(res, state, status, answer.body);
    }
    this.audit(req, principal, status, code);
  }

  private audit(
    req: Pick<CapturedRequest, 'method' | 'path'>,
    principal: Principal | null,
    status: number,
    code: string | null,
  ): void {
    if (req.method === 'GET' || !this.opts.onWrite) return;
    try {
      this.opts.onWrite({
        at: Date.now(),
        method: req.method,
        path: shorten(req.path, MAX_AUDIT_PATH_CHARS),
        principal,
        status,
        code,
      });
    } catch (err) {
      this.opts.onInternalError?.(err, req.method, req.path);
    }
  }

  /** A request refused while it was being read (bad encoding, too long): the connection is closed. */
  private refuseEarly(
    res: uws.HttpResponse,
    state: RequestState,
    err: unknown,
    req: uws.HttpRequest,
    write: boolean,
  ): void {
    let method = 'UNKNOWN';
    let path = '';
    try {
      method = req.getMethod().toUpperCase();
      path = req.getUrl();
    } catch {
      // The request could not even be read; there is nothing to name in the log.
    }
    const { status, body } = this.errorAnswer(path, err);
    if (status === 500) this.opts.onInternalError?.(err, method, shorten(path, 100));
    // Whatever of the request is still in flight must not be parsed as another request.
    this.reply(res, state, status, body, true);
    if (write || method !== 'GET') this.audit({ method, path }, null, status, errorBody(err).error.code);
  }

  private replyError(res: uws.HttpResponse, state: RequestState, err: unknown, req: CapturedRequest): void {
    const { status, body } = this.errorAnswer(req.path, err);
    if (status === 500) this.opts.onInternalError?.(err, req.method, req.path);
    this.reply(res, state, status, body);
  }

  /** The status and body of an error: the registry's, or Cloud Foundry's under the routing API. */
  private errorAnswer(path: string, err: unknown): { status: number; body: unknown } {
    const status = httpStatusFor(err);
    const body = errorBody(err);
    if (this.opts.cfRoutingErrors && path.startsWith(CF_ROUTING_PATH_PREFIX)) return cfErrorReply(status, body);
    return { status, body };
  }

  /** For a throw that escaped every other handler: answer 500 if nothing was sent yet, never crash. */
  private lastResort(res: uws.HttpResponse, state: RequestState, err: unknown, req: CapturedRequest): void {
    this.opts.onInternalError?.(err, req.method, req.path);
    try {
      this.reply(res, state, 500, this.errorAnswer(req.path, err).body, true);
    } catch {
      // The response is gone (aborted or already ended); nothing more to do.
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

  private replyRaw(res: uws.HttpResponse, state: RequestState, status: number, raw: RawBody): void {
    if (state.aborted) return;
    state.aborted = true;
    res.cork(() => {
      res.writeStatus(`${status} ${REASONS[status] ?? ''}`.trimEnd()).writeHeader('content-type', raw.contentType);
      for (const [name, value] of Object.entries(raw.headers ?? {})) res.writeHeader(name, value);
      res.end(raw.data);
    });
  }

  private reply(
    res: uws.HttpResponse,
    state: RequestState,
    status: number,
    body: unknown,
    close = false,
    headers: Record<string, string> = {},
  ): void {
    if (state.aborted) return;
    state.aborted = true; // One reply per request.
    // After an oversized body the rest of it is still in flight, so the connection must go.
    const closeConnection = close || status === 413;
    const payload = status >= 400 ? boundedErrorBody(body) : body;
    res.cork(() => {
      res.writeStatus(`${status} ${REASONS[status] ?? ''}`.trimEnd());
      for (const [name, value] of Object.entries(headers)) res.writeHeader(name, value);
      if (payload === undefined || status === 204) {
        res.end(undefined, closeConnection);
        return;
      }
      res.writeHeader('content-type', 'application/json').end(JSON.stringify(payload), closeConnection);
    });
  }

  private async openStream(
    res: uws.HttpResponse,
    state: RequestState,
    req: CapturedRequest,
    need: Need,
    handler: StreamHandler,
  ): Promise<void> {
    let principal: Principal | null;
    try {
      principal = await this.authorize(req, need, true);
    } catch (err) {
      this.replyError(res, state, err, req);
      return;
    }
    if (state.aborted) return;
    const limit = this.opts.eventBacklogLimitBytes;
    const closers: Array<() => void> = [];
    let closed = false;
    // Bytes written since uWS last reported an empty send buffer: an upper bound of how far the
    // client is behind. A write that returns true has flushed everything queued before it.
    let behind = 0;
    const write = (frame: string): void => {
      if (closed || state.aborted) return;
      let flushed = true;
      res.cork(() => {
        flushed = res.write(frame);
      });
      behind = flushed ? 0 : behind + Buffer.byteLength(frame);
      if (behind > limit) finish(true, true);
    };
    const keepalive = setInterval(() => write(': keep-alive\n\n'), STREAM_KEEPALIVE_MS);
    keepalive.unref();
    const finish = (end: boolean, resync = false) => {
      if (closed) return;
      closed = true;
      clearInterval(keepalive);
      this.streams.delete(sink);
      if (end && !state.aborted) {
        // The resync event goes after what is still queued, so the client reads every event it
        // was sent and then learns it must re-read state. No `closeConnection` here: after a
        // streamed body uWS would write its `Connection: close` header into the body. A client
        // that never reads is closed by uWS's idle timeout (10 s) instead.
        const last = resync
          ? `event: ${RESYNC_EVENT}\ndata: ${JSON.stringify({ reason: 'slow consumer', limit_bytes: limit })}\n\n`
          : undefined;
        res.cork(() => res.end(last));
      }
      state.aborted = true;
      for (const cb of closers) {
        try {
          cb();
        } catch {
          // One failing listener must not keep the others from being told.
        }
      }
    };
    const sink: EventStreamSink = {
      send: (event, data, id) => write(`${id ? `id: ${id}\n` : ''}event: ${event}\ndata: ${data}\n\n`),
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
    try {
      handler(sink, {
        method: req.method,
        path: req.path,
        params: req.params,
        query: req.query,
        principal,
        prefer: req.prefer,
        body: async () => undefined,
      });
    } catch (err) {
      this.opts.onInternalError?.(err, req.method, req.path);
      finish(true);
    }
  }
}

const METHOD_NAMES: Record<HttpMethod, EndpointInfo['method']> = {
  get: 'GET',
  post: 'POST',
  put: 'PUT',
  patch: 'PATCH',
  del: 'DELETE',
};

/** What an endpoint asks of a token: our scope, and for a JWT the Cloud Foundry scope if any. */
interface Need {
  scope: Scope | null;
  cfScope?: string;
}

/**
 * A JWT (a principal with `cfScopes`) needs the endpoint's CF scope where one is set, exactly as
 * routing-api checks it; anywhere else, and for our own tokens, our scope decides.
 */
function requireScope(principal: Principal, need: Need): void {
  if (need.scope === null) return;
  if (principal.cfScopes && need.cfScope) {
    if (!principal.cfScopes.includes(need.cfScope)) {
      throw new SfError(ErrorCode.Forbidden, `this endpoint needs the '${need.cfScope}' scope`, 'authorization');
    }
    return;
  }
  if (!hasScope(principal, need.scope)) {
    throw new SfError(ErrorCode.Forbidden, `this endpoint needs the '${need.scope}' scope`, 'authorization');
  }
}

function paramNames(pattern: string): string[] {
  return pattern
    .split('/')
    .filter((part) => part.startsWith(':'))
    .map((part) => part.slice(1));
}

/**
 * Reads what the handler needs from the uWS request (valid only during the callback) and checks
 * it: URL and header sizes, then each path parameter's percent-encoding. Throws SfErrors only.
 */
function capture(req: uws.HttpRequest, names: string[], limits: Limits): CapturedRequest {
  const path = req.getUrl();
  const rawQuery = req.getQuery() ?? '';
  const urlBytes = Buffer.byteLength(path) + (rawQuery ? Buffer.byteLength(rawQuery) + 1 : 0);
  if (urlBytes > limits.maxUrlBytes) {
    throw new SfError(ErrorCode.UrlTooLong, `the request URL exceeds ${limits.maxUrlBytes} bytes`, 'url');
  }
  let headerBytes = 0;
  req.forEach((key, value) => {
    headerBytes += key.length + value.length + 4;
  });
  if (headerBytes > limits.maxHeaderBytes) {
    throw new SfError(
      ErrorCode.HeadersTooLarge,
      `the request headers exceed ${limits.maxHeaderBytes} bytes`,
      'headers',
    );
  }
  const params: Record<string, string> = {};
  names.forEach((name, i) => (params[name] = decodeParam(name, req.getParameter(i))));
  const length = Number(req.getHeader('content-length') || 0);
  return {
    method: req.getMethod().toUpperCase(),
    path,
    params,
    query: new URLSearchParams(rawQuery),
    authorization: req.getHeader('authorization'),
    prefer: req.getHeader('prefer'),
    contentLength: Number.isFinite(length) ? length : 0,
  };
}

function decodeParam(name: string, raw: string): string {
  let value: string;
  try {
    value = decodeURIComponent(raw);
  } catch {
    throw new SfError(ErrorCode.InvalidRequest, `path parameter '${name}' is not valid percent-encoded UTF-8`, name);
  }
  if (value.length > MAX_PARAM_CHARS) {
    throw new SfError(
      ErrorCode.InvalidRequest,
      `path parameter '${name}' is longer than ${MAX_PARAM_CHARS} characters`,
      name,
    );
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) {
    throw new SfError(ErrorCode.InvalidRequest, `path parameter '${name}' contains control characters`, name);
  }
  return value;
}

function parseJson(buf: Buffer): unknown {
  if (buf.length === 0) throw new SfError(ErrorCode.InvalidJson, 'body must be a JSON document', 'body');
  const text = buf.toString('utf8');
  if (jsonDepth(text) > MAX_JSON_DEPTH) {
    throw new SfError(ErrorCode.InvalidJson, `body nests deeper than ${MAX_JSON_DEPTH} levels`, 'body');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SfError(ErrorCode.InvalidJson, `body is not valid JSON: ${(err as Error).message}`, 'body');
  }
}

/** The deepest nesting of arrays and objects in JSON text, skipping strings; linear, no recursion. */
function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) max = Math.max(max, ++depth);
    else if (c === 0x5d || c === 0x7d) depth--;
  }
  return max;
}

/** At most `max` characters of `text`, marking the cut, so no client input comes back at length. */
function shorten(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

/** The code of an error body a handler returned itself (fencing answers refusals that way). */
function errorCodeIn(body: unknown): string | null {
  const code = (body as Partial<ErrorBody> | null | undefined)?.error?.code;
  return typeof code === 'string' ? code : null;
}

function boundedErrorBody(body: unknown): unknown {
  const err = (body as Partial<ErrorBody> | null | undefined)?.error;
  if (!err || typeof err.message !== 'string') return body;
  // Cloud Foundry's shape carries the message once more at the top (cf-errors.ts).
  const top = (body as { message?: unknown }).message;
  if (err.message.length <= MAX_MESSAGE_CHARS && (typeof top !== 'string' || top.length <= MAX_MESSAGE_CHARS)) {
    return body;
  }
  return {
    ...(body as object),
    ...(typeof top === 'string' && { message: shorten(top, MAX_MESSAGE_CHARS) }),
    error: { ...err, message: shorten(err.message, MAX_MESSAGE_CHARS) },
  };
}
