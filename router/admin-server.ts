/**
 * The router's admin endpoint on uWebSockets.js: `/health`, `/routes`, `/metrics`.
 * It binds to loopback by default; it exposes the table, so keep it off public interfaces.
 */
import {
  App,
  us_listen_socket_close,
  us_socket_local_port,
  type HttpResponse,
  type us_listen_socket,
} from '@trufflesuite/uws-js-unofficial';
import type { Registry } from 'prom-client';
import { ErrorCode, SfError, claimPort } from '../common';
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

export async function startAdminServer(
  router: Router,
  metrics: Registry,
  host: string,
  requestedPort: number,
): Promise<AdminServer> {
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
  app.get('/routes', (res) => {
    sendJson(res, '200 OK', router.currentTable());
  });
  app.get('/metrics', (res) => {
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
  });
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
