/**
 * A real TLS ClientHello, as Node's OpenSSL sends it, captured from a loopback connection, so the
 * SNI benchmarks parse what clients actually send (extensions, GREASE-free ordering, padding)
 * rather than a hand-made minimal record.
 */
import { createServer, type AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export function captureClientHello(serverName: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => {
      const chunks: Buffer[] = [];
      let total = 0;
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        total += chunk.length;
        const all = Buffer.concat(chunks, total);
        // A record is complete once its 5-byte header's length is covered.
        if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) {
          socket.destroy();
          server.close();
          resolve(all);
        }
      });
    });
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      const client = tlsConnect({ host: '127.0.0.1', port, servername: serverName, rejectUnauthorized: false });
      // The server never answers the handshake; the client's failure is expected.
      client.on('error', () => undefined);
    });
  });
}
