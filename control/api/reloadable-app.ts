/**
 * A uWebSockets.js app whose HTTPS certificate can be replaced while it serves. uWS reads its
 * certificate once, when the app is made, so a renewed certificate needs a new app: every
 * registration is kept and replayed on it, the new app listens on the same port next to the old
 * one (uWS binds with SO_REUSEPORT) and then the old listening socket is closed. Connections
 * already open stay on the old app until their clients close them, so no request in flight is cut
 * (docs/tls.md, "Renewal").
 *
 * SO_REUSEPORT would also let a second control started on the same port share the clients with
 * the first, without an error. So before its first listen the port is bound once without it: a
 * port another listener holds is refused there.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import * as uws from '@trufflesuite/uws-js-unofficial';
import { ErrorCode, SfError, claimPort } from '../../common';

export interface HttpsFiles {
  certFile: string;
  keyFile: string;
}

/** Replaced apps kept serving their open connections; older ones are closed. */
const MAX_RETIRED_APPS = 4;

type Registration = (app: uws.TemplatedApp) => void;

function makeApp(tls: HttpsFiles | undefined): uws.TemplatedApp {
  return tls ? uws.SSLApp({ cert_file_name: tls.certFile, key_file_name: tls.keyFile }) : uws.App();
}

function listenNow(app: uws.TemplatedApp, host: string, port: number): uws.us_listen_socket | false {
  let result: uws.us_listen_socket | false = false;
  // uWS calls back synchronously.
  app.listen(host, port, (s) => {
    result = s;
  });
  return result;
}

/**
 * Checks that a certificate and key parse and belong together, so a pair caught in the middle of
 * being rewritten is not served (it is tried again at the next check).
 */
export async function checkHttpsFiles(files: HttpsFiles): Promise<{ fingerprint: string }> {
  const [certPem, keyPem] = await Promise.all([readFile(files.certFile), readFile(files.keyFile)]);
  const cert = new X509Certificate(certPem);
  if (!cert.checkPrivateKey(createPrivateKey(keyPem)))
    throw new SfError(ErrorCode.Certificate, `${files.keyFile} is not the key of ${files.certFile}`, 'tls');
  return { fingerprint: cert.fingerprint256 };
}

export class ReloadableApp {
  private app: uws.TemplatedApp;
  private readonly registrations: Registration[] = [];
  /** Apps replaced by a reload: they keep serving their open connections until `close()`. */
  private readonly retired: uws.TemplatedApp[] = [];
  private listenSocket: uws.us_listen_socket | null = null;
  private address: { host: string; port: number } | null = null;

  constructor(private tls: HttpsFiles | undefined) {
    this.app = makeApp(tls);
  }

  /** Registers handlers on the current app and on every app a reload makes. */
  register(registration: Registration): void {
    this.registrations.push(registration);
    registration(this.app);
  }

  async listen(host: string, port: number): Promise<number> {
    const chosen = await claimPort(host, port);
    const socket = listenNow(this.app, host, chosen);
    if (!socket) throw new SfError(ErrorCode.ListenFailed, `cannot listen on ${host}:${port}`, 'listen');
    this.listenSocket = socket;
    const bound = uws.us_socket_local_port(socket as unknown as uws.us_socket);
    this.address = { host, port: bound };
    return bound;
  }

  /**
   * Serves new connections with the certificate now in `files` (checked first). When the new
   * app cannot take the port, the error is thrown and the old one keeps serving.
   */
  async reload(files: HttpsFiles): Promise<void> {
    if (!this.tls) throw new SfError(ErrorCode.Certificate, 'this server speaks plain HTTP', 'tls');
    await checkHttpsFiles(files);
    const next = makeApp(files);
    for (const r of this.registrations) r(next);
    if (!this.listenSocket || !this.address) {
      this.retire(next);
      this.tls = files;
      return;
    }
    const { host, port } = this.address;
    const socket = listenNow(next, host, port);
    if (!socket) {
      (next as unknown as { close?: () => void }).close?.();
      throw new SfError(ErrorCode.ListenFailed, `cannot listen on ${host}:${port} with the new certificate`, 'tls');
    }
    uws.us_listen_socket_close(this.listenSocket);
    this.listenSocket = socket;
    this.retire(next);
    this.tls = files;
  }

  private retire(next: uws.TemplatedApp): void {
    this.retired.push(this.app);
    this.app = next;
    // Each renewal retires one app; connections older than a few renewals (months) are cut.
    while (this.retired.length > MAX_RETIRED_APPS)
      (this.retired.shift() as unknown as { close?: () => void }).close?.();
  }

  /** Stops listening and closes every connection, of the current app and of replaced ones. */
  close(): void {
    if (this.listenSocket) uws.us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
    // `close()` exists on an app at runtime (it closes every socket) but not in the typings.
    for (const app of [...this.retired.splice(0), this.app]) (app as unknown as { close?: () => void }).close?.();
  }
}
