/**
 * The reference proxy every relay must beat clearly: Node's `net` with `pipe()` both ways and
 * nothing else. Run as its own process: `node naive-pipe.js LISTEN_PORT:TARGET_HOST:TARGET_PORT ...`
 * (one listener per mapping), prints "ready" once all listen.
 */
import { connect, createServer, type Server } from 'node:net';

export interface PipeMapping {
  listenPort: number;
  targetHost: string;
  targetPort: number;
}

export function startNaivePipe(mapping: PipeMapping): Promise<Server> {
  const server = createServer((client) => {
    const backend = connect({ host: mapping.targetHost, port: mapping.targetPort });
    client.pipe(backend);
    backend.pipe(client);
    const destroyBoth = (): void => {
      client.destroy();
      backend.destroy();
    };
    client.once('error', destroyBoth);
    backend.once('error', destroyBoth);
    client.once('close', () => backend.destroy());
    backend.once('close', () => client.destroy());
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: mapping.listenPort, host: '127.0.0.1', backlog: 4096 }, () => resolve(server));
  });
}

export function parseMapping(spec: string): PipeMapping {
  const [listen, host, port] = spec.split(':');
  return { listenPort: Number(listen), targetHost: host, targetPort: Number(port) };
}

if (require.main === module) {
  void Promise.all(process.argv.slice(2).map((spec) => startNaivePipe(parseMapping(spec)))).then(() => {
    process.stdout.write('ready\n');
  });
}
