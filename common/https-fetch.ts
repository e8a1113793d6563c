/**
 * `fetch` that verifies an `https://` server against a given CA (the platform CA, docs/tls.md).
 * Node's built-in fetch takes its CAs from the system and NODE_EXTRA_CA_CERTS, read once at
 * start, so a request that must trust the platform CA goes through `node:https` and comes back
 * as a standard `Response` (its body streams, for server-sent events).
 */
import { request } from 'node:https';
import { Readable } from 'node:stream';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';

export interface CaFetchInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** `fetch(url, init)`, except that an https URL with `ca` is verified against `ca` alone. */
export function fetchWithCa(url: string, init: CaFetchInit, ca: Buffer | string | undefined): Promise<Response> {
  if (ca === undefined || !url.startsWith('https:')) return fetch(url, init);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: init.method ?? 'GET', headers: init.headers, ca, signal: init.signal },
      (res) => {
        const headers = new Headers();
        for (const [name, value] of Object.entries(res.headers)) {
          if (Array.isArray(value)) for (const v of value) headers.append(name, v);
          else if (value !== undefined) headers.set(name, value);
        }
        // 204 and 304 carry no body, and Response refuses one for them.
        const empty = res.statusCode === 204 || res.statusCode === 304;
        if (empty) res.resume();
        const body = empty
          ? null
          : (Readable.toWeb(res) as NodeReadableStream<Uint8Array> as ReadableStream<Uint8Array>);
        resolve(new Response(body, { status: res.statusCode ?? 502, headers }));
      },
    );
    req.once('error', (err) => reject(new TypeError('fetch failed', { cause: err })));
    req.end(init.body);
  });
}
