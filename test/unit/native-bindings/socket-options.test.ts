import { createServer, type Server } from 'node:net';
import { expect } from 'chai';
import { loadNativeBindings } from '../../../native-bindings';
import { listenReusePort, openReusePortFd, reusePortAvailable } from '../../../router/reuseport';
import { setKeepAliveProbes, setTcpUserTimeout } from '../../../router/tcp-options';
import { freePort } from '../../helpers/free-port';
import { connectTo, closed } from '../../helpers/tcp-client';

const built = loadNativeBindings() !== undefined;
const describeBuilt = built ? describe : describe.skip;

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

describeBuilt(built ? 'reuseport' : 'reuseport (skipped: the addon is not built; run scripts/build-native.sh)', () => {
  describe('listenReusePort', () => {
    it('lets two servers listen on one port and spreads connections over both', async () => {
      const port = await freePort();
      const accepted = [0, 0];
      const servers = [0, 1].map((i) =>
        createServer((s) => {
          accepted[i]++;
          s.destroy();
        }),
      );
      try {
        for (const server of servers) expect(await listenReusePort(server, { host: '127.0.0.1', port })).to.equal(true);
        for (let i = 0; i < 64; i++) await closed(await connectTo(port), 2000);
        expect(accepted[0] + accepted[1]).to.equal(64);
        // The kernel hashes each connection's 4-tuple; 64 connections all on one side would
        // mean the second listener is not in the group.
        expect(accepted[0]).to.be.above(0);
        expect(accepted[1]).to.be.above(0);
      } finally {
        await Promise.all(servers.map(closeServer));
      }
    });

    it('listens on IPv6', async () => {
      const server = createServer((s) => s.end('v6'));
      try {
        expect(await listenReusePort(server, { host: '::1', port: 0, ipv6Only: true })).to.equal(true);
        const addr = server.address();
        expect(typeof addr === 'object' && addr?.family).to.equal('IPv6');
      } finally {
        await closeServer(server);
      }
    });
  });

  describe('openReusePortFd', () => {
    it('fails with EADDRINUSE when a listener without SO_REUSEPORT holds the port', async () => {
      const port = await freePort();
      const plain = createServer();
      await new Promise<void>((r) => plain.listen(port, '127.0.0.1', () => r()));
      try {
        expect(() => openReusePortFd({ host: '127.0.0.1', port }))
          .to.throw()
          .that.satisfies((err: NodeJS.ErrnoException) => err.code === 'EADDRINUSE' && err.errno === 98);
      } finally {
        await closeServer(plain);
      }
    });

    it('refuses a host that is not a numeric address', () => {
      expect(() => openReusePortFd({ host: 'example.invalid', port: 0 })).to.throw(/Invalid argument/);
    });
  });

  describe('tcp options', () => {
    it('sets TCP_USER_TIMEOUT and keepalive probes on a connected socket', async () => {
      const server = createServer((s) => s.on('error', () => undefined));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const addr = server.address();
      const socket = await connectTo(typeof addr === 'object' && addr ? addr.port : 0);
      try {
        expect(setTcpUserTimeout(socket, 5000)).to.equal(true);
        expect(setKeepAliveProbes(socket, { idleSeconds: 10, intervalSeconds: 3, count: 4 })).to.equal(true);
      } finally {
        socket.destroy();
        await closeServer(server);
      }
    });

    it('reports a kernel refusal with errno', () => {
      const bindings = loadNativeBindings()!;
      expect(() => bindings.setTcpUserTimeout(-1, 1000))
        .to.throw()
        .that.satisfies((err: NodeJS.ErrnoException) => err.code === 'EBADF');
    });
  });
});

describe('reusePortAvailable', () => {
  it('says whether the addon can open reuse-port listeners', () => {
    expect(reusePortAvailable()).to.equal(built);
  });
});
