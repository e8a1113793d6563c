/**
 * A minimal Docker Engine API client over the daemon's Unix socket (node http with socketPath),
 * enough for the docker executor: ping, create, start, stop, kill, inspect, remove.
 */
import { request } from 'node:http';

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

export function defaultDockerSocket(): string {
  const host = process.env.DOCKER_HOST;
  return host?.startsWith('unix://') ? host.slice('unix://'.length) : '/var/run/docker.sock';
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

  call(method: string, path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<DockerResponse> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path: path === '/_ping' ? path : `/${this.apiVersion}${path}`,
          headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              // Plain-text bodies (e.g. `OK` from /_ping) stay text.
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer from ${this.socketPath} within ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end(payload);
    });
  }
}
