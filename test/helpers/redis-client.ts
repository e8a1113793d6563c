import { Redis } from 'ioredis';

/** Connects through the router until a write succeeds; returns the connected client. */
export async function firstWrite(
  port: number,
  timeoutMs: number,
  auth?: { username: string; password: string },
): Promise<Redis> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    const client = new Redis({
      port,
      host: '127.0.0.1',
      maxRetriesPerRequest: 1,
      retryStrategy: () => null,
      connectTimeout: 1000,
      ...(auth ? { username: auth.username, password: auth.password } : {}),
    });
    client.on('error', () => undefined);
    try {
      if ((await client.set('greeting', 'hello')) === 'OK') return client;
    } catch (err) {
      lastError = (err as Error).message;
    }
    client.disconnect();
    if (Date.now() > deadline)
      throw new Error(`no write through router port ${port} within ${timeoutMs} ms: ${lastError}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
