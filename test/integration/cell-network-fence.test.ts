import path from 'node:path';
import { expect } from 'chai';
import { NetworkFencer } from '../../cell/fencer-network';
import { connect } from 'node:net';
import { eventually } from '../helpers/cell-harness';
import { createNetnsHost, netnsSupported, type NetnsHost } from '../helpers/netns';

const ECHO = "require('net').createServer((s) => s.pipe(s)).listen(Number(process.argv[1]), process.argv[2])";
const FENCER = path.resolve(__dirname, '../../cell/fencer-network.js');

/**
 * True when bytes sent come back from the echo server. A bare connect is not proof here: with the
 * link down, traffic takes the default route, and some sandboxes accept any TCP connect there.
 */
function echoes(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => socket.write('ping'));
    socket.once('data', (d: Buffer) => done(d.toString() === 'ping'));
    socket.once('error', () => done(false));
  });
}

describe('NetworkFencer', function () {
  this.timeout(30_000);
  let host: NetnsHost | undefined;
  let fencer: NetworkFencer;

  before(async function () {
    if (!(await netnsSupported())) {
      console.log('      skipped: creating network namespaces needs root with CAP_NET_ADMIN and iproute2');
      this.skip();
    }
  });

  beforeEach(async () => {
    host = await createNetnsHost();
    fencer = new NetworkFencer();
    host.spawn(process.execPath, ['-e', ECHO, '7000', host.address]);
    const address = host.address;
    await eventually(() => echoes(address, 7000, 500), 10_000, 'echo server in the namespace');
  });

  afterEach(async () => {
    if (host) await fencer.unfence([host.address]).catch(() => undefined);
    fencer.close();
    await host?.cleanup();
    host = undefined;
  });

  describe('fence', () => {
    it('blocks traffic to a namespace with a prohibit route and unfence restores it', async () => {
      const h = host as NetnsHost;
      await fencer.fence([h.address]);
      await fencer.fence([h.address]); // Idempotent: orders may be retried.
      expect(await echoes(h.address, 7000, 1_000)).to.equal(false);
      await fencer.unfence([h.address]);
      await fencer.unfence([h.address]);
      expect(await echoes(h.address, 7000, 1_000)).to.equal(true);
    });

    it('cuts a namespace off from inside when the cell there fences its peers', async () => {
      const h = host as NetnsHost;
      const script = `const { NetworkFencer } = require(${JSON.stringify(FENCER)}); const f = new NetworkFencer(); f[process.argv[1]]([process.argv[2]]).then(() => f.close())`;
      await h.run(process.execPath, ['-e', script, 'fence', h.gateway]);
      // Replies from inside are now refused by its own routing table, so connects time out.
      expect(await echoes(h.address, 7000, 1_000)).to.equal(false);
      await h.run(process.execPath, ['-e', script, 'unfence', h.gateway]);
      expect(await echoes(h.address, 7000, 1_000)).to.equal(true);
    });
  });

  describe('setLinkUp', () => {
    it('takes the link down and up again', async () => {
      const h = host as NetnsHost;
      await fencer.setLinkUp(h.vethRoot, false);
      expect(await echoes(h.address, 7000, 1_000)).to.equal(false);
      await fencer.setLinkUp(h.vethRoot, true);
      await eventually(() => echoes(h.address, 7000, 500), 5_000, 'link back up');
    });
  });
});
