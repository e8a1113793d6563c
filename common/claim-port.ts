/**
 * uWebSockets.js binds with SO_REUSEPORT, so a second server started on a port already in use
 * would share its clients without an error. Servers on uWS claim their port here first.
 */
import { createServer } from 'node:net';
import { ErrorCode, SfError } from './errors';

/**
 * The port to listen on: `port` when no listening socket holds it, or for 0 one the kernel picks.
 * Node binds with SO_REUSEADDR and without SO_REUSEPORT, so connections left from an earlier run
 * (TIME_WAIT) do not count, a listener does. Port 0 is resolved here because Linux does not let
 * a second socket join one bound to port 0, and a seamless reload needs to.
 */
export function claimPort(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new SfError(ErrorCode.ListenFailed, `cannot listen on ${host}:${port}: ${err.code ?? err.message}`, 'listen'),
      ),
    );
    probe.listen({ host, port, exclusive: true }, () => {
      const address = probe.address();
      const chosen = typeof address === 'object' && address ? address.port : port;
      probe.close(() => resolve(chosen));
    });
  });
}
