import { createHash, randomBytes } from 'node:crypto';
import { createServer, connect, type Socket } from 'node:net';
import { expect } from 'chai';
import { acceptWithForwarders } from '../../../router/accept-with-forwarder';
import { forwarderOf, resumeForwarded } from '../../../router/read-forwarder';

describe('read-forwarder', () => {
  describe('acceptWithForwarders', () => {
    it('accepts clients into forwarding sockets that deliver every byte to a slow peer', async function () {
      this.timeout(30_000);
      // sink: reads slowly, so the forwarder's writes queue and its buffer is often in flight.
      let sinkHash = createHash('sha256');
      let sinkBytes = 0;
      const sink = createServer((s) => {
        s.on('data', (c: Buffer) => {
          sinkHash.update(c);
          sinkBytes += c.length;
          s.pause();
          setTimeout(() => s.resume(), 1);
        });
      });
      await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
      const sinkPort = (sink.address() as { port: number }).port;

      let accepted: Socket | undefined;
      const front = createServer({ pauseOnConnect: true }, (client) => {
        accepted = client;
        const out = connect(sinkPort, '127.0.0.1', () => {
          forwarderOf(client)!.forwardTo(out);
          out.on('drain', () => resumeForwarded(client));
          resumeForwarded(client);
        });
      });
      await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
      expect(acceptWithForwarders(front, () => true)).to.equal(true);

      const total = 32 * 1024 * 1024;
      const data = randomBytes(total);
      const sent = createHash('sha256').update(data).digest('hex');
      const client = connect((front.address() as { port: number }).port, '127.0.0.1');
      client.end(data);
      const deadline = Date.now() + 25_000;
      while (sinkBytes < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(forwarderOf(accepted!)).to.not.equal(undefined);
      expect(sinkBytes).to.equal(total);
      expect(sinkHash.digest('hex')).to.equal(sent);
      sinkHash = createHash('sha256');
      front.close();
      sink.close();
      accepted?.destroy();
    });
  });
});
