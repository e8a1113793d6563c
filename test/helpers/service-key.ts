/**
 * Service keys for tests: nothing answers without credentials, so a test that talks to
 * a service through the router first asks control for a key, as a user would.
 */
export interface ServiceKeyAuth {
  username: string;
  password: string;
  /** A service with TLS: the platform CA (PEM) and its file, to verify the router with. */
  ca?: { pem: string; file: string };
}

type Api = <T>(method: string, path: string, body?: unknown) => Promise<{ status: number; body: T }>;

/** Creates key `key` of service `service` (allowed before the service runs) and returns its user. */
export async function serviceKey(api: Api, service: string, key = 'test'): Promise<ServiceKeyAuth> {
  const res = await api<ServiceKeyAuth & { error?: { message: string } }>(
    'POST',
    `/v3/service_instances/${service}/keys`,
    { name: key },
  );
  if (res.status !== 201)
    throw new Error(`service key ${key} of ${service}: ${res.status} ${JSON.stringify(res.body)}`);
  return { username: res.body.username, password: res.body.password };
}
