/** GET over HTTPS with the given CA and, when given, a client certificate (mTLS endpoints). */
import { request as httpsRequest } from 'node:https';

export interface HttpsGetTls {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

export function httpsGet(url: string, tls: HttpsGetTls, timeoutMs = 5_000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ...tls, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}
