/**
 * Captures a real TLS ClientHello from Node's TLS client, so SNI tests use the bytes a real
 * client sends rather than hand-made ones.
 */
import { createServer } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export function captureClientHello(serverName: string | undefined): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => {
      socket.once('data', (chunk: Buffer) => {
        resolve(chunk);
        socket.destroy();
        server.close();
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      const tls = tlsConnect({ host: '127.0.0.1', port, servername: serverName, rejectUnauthorized: false });
      tls.on('error', () => undefined);
      tls.on('close', () => undefined);
    });
    server.on('error', reject);
  });
}
