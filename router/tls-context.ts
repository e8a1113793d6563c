/**
 * The server side of a terminating route: its certificate, key and client CA loaded into one
 * SecureContext, reloaded when the files change. A renewed certificate (the platform CA renews
 * before expiry, an operator replaces the files) serves every handshake after the change; a
 * connection already established keeps the session it negotiated.
 */
import { readFileSync, statSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { ErrorCode, SfError } from '../common';
import type { RouteTls } from '../protocol';
import { ROUTER_CIPHERS } from './tls-suites';

/** @default how often (at most) a handshake checks whether the files changed: 1000 ms */
export const DEFAULT_TLS_RELOAD_CHECK_MS = 1_000;

/** PostgreSQL clients that negotiate TLS directly (PostgreSQL 17 `sslnegotiation=direct`) must offer this ALPN. */
const POSTGRES_ALPN = ['postgresql'];

function fileStamp(path: string): string {
  const st = statSync(path);
  return `${st.mtimeMs}:${st.size}:${st.ino}`;
}

export class ServerTlsContext {
  private context: SecureContext | undefined;
  private stamp = '';
  private checkedAt = 0;
  /** The last load error, kept until a load succeeds; never holds key material. */
  lastError: SfError | undefined;
  /** Successful loads after the first: how many times a changed certificate was taken. */
  reloads = 0;

  constructor(
    readonly settings: RouteTls,
    private readonly reloadCheckMs = DEFAULT_TLS_RELOAD_CHECK_MS,
  ) {
    this.load();
  }

  /** ALPN protocols the server offers: the route's, or `postgresql` on a PostgreSQL route. */
  get alpn(): string[] | undefined {
    return this.settings.alpn ?? (this.settings.startup === 'postgres' ? POSTGRES_ALPN : undefined);
  }

  get mutual(): boolean {
    return this.settings.clientCaFile !== undefined;
  }

  /**
   * The context for a new handshake, after a reload if the files changed (checked at most once
   * per `reloadCheckMs`). Undefined while no pair of files ever loaded.
   */
  current(now = Date.now()): SecureContext | undefined {
    if (now - this.checkedAt >= this.reloadCheckMs) {
      this.checkedAt = now;
      this.load();
    }
    return this.context;
  }

  private files(): string[] {
    const { certFile, keyFile, clientCaFile } = this.settings;
    return [certFile!, keyFile!, ...(clientCaFile ? [clientCaFile] : [])];
  }

  private load(): void {
    let stamp: string;
    try {
      stamp = this.files().map(fileStamp).join('|');
    } catch (err) {
      this.lastError = new SfError(ErrorCode.Certificate, `cannot read TLS files: ${(err as Error).message}`);
      return;
    }
    if (stamp === this.stamp) return;
    const { certFile, keyFile, clientCaFile, minVersion } = this.settings;
    try {
      const context = createSecureContext({
        cert: readFileSync(certFile!),
        key: readFileSync(keyFile!),
        ...(clientCaFile ? { ca: readFileSync(clientCaFile) } : {}),
        minVersion,
        // The router's order of suites decides (as HAProxy's and the native relay's do).
        ciphers: ROUTER_CIPHERS,
        honorCipherOrder: true,
      });
      if (this.context) this.reloads++;
      this.context = context;
      this.stamp = stamp;
      this.lastError = undefined;
    } catch (err) {
      // A certificate written before its key (or the reverse) does not match for a moment; the
      // old context stays in force and the next check tries again. The message names the files,
      // never their contents.
      this.lastError = new SfError(
        ErrorCode.Certificate,
        `cannot load ${certFile} / ${keyFile}${clientCaFile ? ` / ${clientCaFile}` : ''}: ${(err as Error).message}`,
      );
    }
  }
}

/** True when two routes' TLS settings load the same files the same way. */
export function sameTlsSettings(a: RouteTls | undefined, b: RouteTls | undefined): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
