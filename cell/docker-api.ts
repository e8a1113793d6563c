/**
 * A minimal Docker Engine API client over the daemon's Unix socket (node http with socketPath),
 * enough for the docker executor and the image builder: ping, create, start, stop, kill, wait,
 * inspect, list, remove, and an image import streamed from a tar.
 */
import { request, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';

export interface DockerApiOptions {
  /** @default '/var/run/docker.sock' (or DOCKER_HOST when it is unix://) */
  socketPath?: string;
  /** @default 'v1.41' */
  apiVersion?: string;
  /** @default 5000 */
  timeoutMs?: number;
}

export interface DockerResponse {
  status: number;
  body: unknown;
}

export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';

export function defaultDockerSocket(): string {
  const host = process.env.DOCKER_HOST;
  return host?.startsWith('unix://') ? host.slice('unix://'.length) : DEFAULT_DOCKER_SOCKET;
}

function readBody(res: IncomingMessage, resolve: (r: DockerResponse) => void, raw: boolean): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => {
    if (raw) return resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
    const text = Buffer.concat(chunks).toString('utf8');
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // Plain-text bodies (e.g. `OK` from /_ping, progress streams) stay text.
    }
    resolve({ status: res.statusCode ?? 0, body: parsed });
  });
}

export class DockerApi {
  readonly socketPath: string;
  private readonly apiVersion: string;
  private readonly timeoutMs: number;

  constructor(options: DockerApiOptions = {}) {
    this.socketPath = options.socketPath ?? defaultDockerSocket();
    this.apiVersion = options.apiVersion ?? 'v1.41';
    this.timeoutMs = options.timeoutMs ?? 5_000;
  }

  /** One request with a JSON body; `timeoutMs` 0 waits as long as the daemon does (`/wait`). */
  call(method: string, path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<DockerResponse> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return this.send(
      method,
      path,
      payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
      timeoutMs,
      (req) => req.end(payload),
    );
  }

  /** A GET whose body stays bytes (container logs, multiplexed with 8-byte frame headers). */
  raw(path: string, timeoutMs = this.timeoutMs): Promise<{ status: number; body: Buffer }> {
    return this.send('GET', path, {}, timeoutMs, (req) => req.end(), true) as Promise<{ status: number; body: Buffer }>;
  }

  /** A request whose body is a stream (an image tarball for `/images/create?fromSrc=-`). */
  upload(path: string, body: Readable, contentType = 'application/x-tar'): Promise<DockerResponse> {
    return this.send('POST', path, { 'content-type': contentType, 'transfer-encoding': 'chunked' }, 0, (req) => {
      body.on('error', (err) => req.destroy(err));
      body.pipe(req);
    });
  }

  private send(
    method: string,
    path: string,
    headers: Record<string, string | number>,
    timeoutMs: number,
    write: (req: ReturnType<typeof request>) => void,
    raw = false,
  ): Promise<DockerResponse> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path: path === '/_ping' ? path : `/${this.apiVersion}${path}`,
          headers,
          timeout: timeoutMs,
          // A connection of its own: node's shared keep-alive agent times idle sockets out after
          // 5 s, which would cut a long `/wait` or an upload whose producer is still working.
          agent: false,
        },
        (res) => readBody(res, resolve, raw),
      );
      req.on('timeout', () => req.destroy(new Error(`no answer from ${this.socketPath} within ${timeoutMs} ms`)));
      req.on('error', reject);
      write(req);
    });
  }
}

/** Payloads of a multiplexed stream (`[stream, 0, 0, 0, size(4, big-endian)]` + payload) in order. */
export function demuxDockerStream(data: Buffer): Buffer {
  const out: Buffer[] = [];
  let i = 0;
  while (i + 8 <= data.length) {
    const size = data.readUInt32BE(i + 4);
    out.push(data.subarray(i + 8, i + 8 + size));
    i += 8 + size;
  }
  return Buffer.concat(out);
}
