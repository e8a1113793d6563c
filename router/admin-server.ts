/**
 * The router's admin endpoint on uWebSockets.js: `/health`, `/routes`, `/metrics`.
 * It binds to loopback by default. `/routes` (the table, backend addresses included) and
 * `/metrics` need `authorization: Bearer TOKEN`; `/health` answers without one, as control's does,
 * so that probes need no secret (it names no backend).
 */
import {
  App,
  us_listen_socket_close,
  us_socket_local_port,
  type HttpRequest,
  type HttpResponse,
  type us_listen_socket,
} from '@trufflesuite/uws-js-unofficial';
import type { Registry } from 'prom-client';
import { ErrorCode, SfError, bearerAccepted, bearerRequiredBody, claimPort } from '../common';
import type { Router } from './router';

export interface AdminServer {
  readonly port: number;
  close(): void;
}

function send(res: HttpResponse, status: string, contentType: string, body: string): void {
  res.cork(() => {
    res.writeStatus(status).writeHeader('content-type', contentType).end(body);
  });
}

function sendJson(res: HttpResponse, status: string, body: unknown): void {
  send(res, status, 'application/json', JSON.stringify(body));
}

/** Runs `handler` when the request carries the admin token, else answers 401. */
function withToken(token: string, handler: (res: HttpResponse) => void): (res: HttpResponse, req: HttpRequest) => void {
  return (res, req) => {
    if (bearerAccepted(req.getHeader('authorization'), token)) {
      handler(res);
      return;
    }
    res.cork(() => {
      res
        .writeStatus('401 Unauthorized')
        .writeHeader('www-authenticate', 'Bearer realm="sf-router"')
        .writeHeader('content-type', 'application/json')
        .end(bearerRequiredBody('the router admin endpoint', 'docs/router.md, "Admin endpoint"'));
    });
  };
}

export async function startAdminServer(
  router: Router,
  metrics: Registry,
  host: string,
  requestedPort: number,
  token: string,
): Promise<AdminServer> {
  if (!token) throw new SfError(ErrorCode.InvalidRequest, 'the router admin endpoint needs a token', 'token');
  // A second router on this admin port would otherwise share it silently (claim-port.ts).
  const port = await claimPort(host, requestedPort).catch((err: Error) => {
    throw new SfError(ErrorCode.ListenFailed, `admin endpoint ${err.message}`, 'admin');
  });
  const app = App();
  app.get('/health', (res) => {
    const status = router.status();
    sendJson(res, status.serving ? '200 OK' : '503 Service Unavailable', {
      status: status.serving ? 'ok' : 'fail-closed',
      ...status,
    });
  });
  app.get(
    '/routes',
    withToken(token, (res) => sendJson(res, '200 OK', router.currentTable())),
  );
  app.get(
    '/metrics',
    withToken(token, (res) => {
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      metrics.metrics().then(
        (text) => {
          if (!aborted) send(res, '200 OK', metrics.contentType, text);
        },
        (err: Error) => {
          if (!aborted)
            sendJson(res, '500 Internal Server Error', { error: { code: ErrorCode.Metrics, message: err.message } });
        },
      );
    }),
  );
  app.any('/*', (res, req) => {
    sendJson(res, '404 Not Found', {
      error: {
        code: ErrorCode.NotFound,
        message: `no admin endpoint ${req.getMethod().toUpperCase()} ${req.getUrl()}`,
      },
    });
  });
  return new Promise((resolve, reject) => {
    app.listen(host, port, (socket: us_listen_socket | false) => {
      if (!socket) {
        reject(new SfError(ErrorCode.ListenFailed, `admin endpoint cannot listen on ${host}:${port}`, 'admin'));
        return;
      }
      resolve({
        port: us_socket_local_port(socket as unknown as Parameters<typeof us_socket_local_port>[0]),
        close: () => us_listen_socket_close(socket),
      });
    });
  });
}
