/**
 * The HTTP client behind the `sf` client commands: finds control and a token the way DESIGN.md
 * promises (flags, then `SF_CONTROL_URL` / `SF_API_TOKEN`, then what `sf up` on this machine
 * recorded: its control's URL and CA, cli/local-control.ts, and its admin token file), and turns
 * error bodies back into SfErrors with the server's code and field.
 */
import { readFile } from 'node:fs/promises';
import { DEFAULT_CONTROL_URL, discoverAdminToken } from '../control/admin-token';
import { ErrorCode, SfError, isErrorCode } from '../common/errors';
import { fetchWithCa } from '../common/https-fetch';
import { CA_FILE_ENV, resolveControl } from './local-control';

export { DEFAULT_CONTROL_URL };

/** The last SSE event of a stream control ends because the client fell behind (control/api/http-server.ts). */
export const RESYNC_EVENT = 'resync';

export interface ApiClientOptions {
  baseUrl: string;
  token: string | null;
  /** The CA (PEM) an https control is verified with. @default the system's */
  ca?: Buffer;
}

export { CA_FILE_ENV };

/** The CA (PEM) for an https control (resolveControl): unreadable is an error only when named by SF_CA_FILE. */
async function controlCa(env: NodeJS.ProcessEnv, caFile: string | undefined): Promise<Buffer | undefined> {
  if (!caFile) return undefined;
  const named = env[CA_FILE_ENV] === caFile;
  return readFile(caFile).catch((err: Error) => {
    if (!named) return undefined;
    throw new SfError(ErrorCode.InvalidOption, `${CA_FILE_ENV}=${caFile} cannot be read: ${err.message}`, CA_FILE_ENV);
  });
}

export interface ServerSentEvent {
  event: string;
  data: string;
  id?: string;
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly token: string | null;
  private readonly ca: Buffer | undefined;

  constructor(options: ApiClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.ca = options.ca;
  }

  /** A client configured from the environment and the admin token file of the control it talks to. */
  static async fromEnv(env: NodeJS.ProcessEnv = process.env): Promise<ApiClient> {
    const { url: baseUrl, caFile } = await resolveControl(env);
    const ca = await controlCa(env, caFile);
    return new ApiClient({ baseUrl, token: await discoverAdminToken(env, baseUrl), ...(ca ? { ca } : {}) });
  }

  async request<T>(method: string, path: string, body?: unknown, extraHeaders?: Record<string, string>): Promise<T> {
    const res = await this.send(method, path, body, undefined, extraHeaders);
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      throw new SfError(ErrorCode.BadResponse, `${method} ${path}: control answered ${res.status} with non-JSON`);
    }
    if (!res.ok) throw toError(res.status, parsed, `${method} ${path}`);
    return parsed as T;
  }

  /** Follows a server-sent event stream until it ends or `signal` aborts. */
  async stream(path: string, onEvent: (event: ServerSentEvent) => void, signal?: AbortSignal): Promise<void> {
    const res = await this.send('GET', path, undefined, signal);
    if (!res.ok || !res.body) {
      const text = await res.text();
      throw toError(res.status, safeJson(text), `GET ${path}`);
    }
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of res.body) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = parseFrame(frame);
          if (event) onEvent(event);
        }
      }
    } catch (err) {
      if (!signal?.aborted) throw err;
    }
  }

  private async send(
    method: string,
    path: string,
    body: unknown,
    signal?: AbortSignal,
    extraHeaders: Record<string, string> = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { ...extraHeaders };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetchWithCa(
        `${this.baseUrl}${path}`,
        { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal },
        this.ca,
      );
    } catch (err) {
      const inner = (err as { cause?: { code?: string; message?: string } }).cause;
      const cause = inner?.code ?? inner?.message ?? (err as Error).message;
      throw new SfError(
        ErrorCode.ControlUnreachable,
        `cannot reach control at ${this.baseUrl} (${cause}); is 'sf control' running? (SF_CONTROL_URL)`,
      );
    }
  }
}

function toError(status: number, body: unknown, what: string): SfError {
  const err = (body as { error?: { code?: string; message?: string; field?: string } } | null)?.error;
  // Only input errors keep their field: the CLI exits 2 for those (fix the input) and 1 for
  // refusals such as 401, 403 or a stale modification tag.
  const inputError = status === 400 || status === 413 || status === 422;
  if (isErrorCode(err?.code))
    return new SfError(err.code, err.message ?? `${what} failed with ${status}`, inputError ? err.field : undefined);
  return new SfError(ErrorCode.BadResponse, `${what} failed with HTTP ${status}`);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function parseFrame(frame: string): ServerSentEvent | null {
  let event = 'message';
  let id: string | undefined;
  const data: string[] = [];
  for (const line of frame.split('\n')) {
    if (line.startsWith(':')) continue; // comment / keep-alive
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  return data.length ? { event, data: data.join('\n'), id } : null;
}
