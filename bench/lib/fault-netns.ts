/**
 * A cell on a network of its own, so the fault checker can partition it (the `cell-partition`
 * fault): the cell and its engines run in a network namespace joined to the host by a veth pair
 * (test/helpers/netns.ts), and reach the loopback-only state Redis through a TCP forward on the
 * namespace's gateway address. Taking the host side of the pair down cuts the cell off from the
 * store, the router, the checker and its peers at once, as a lost link would; up heals it.
 *
 * The other cells then cannot advertise loopback (a replica in the namespace would dial its own
 * loopback): they listen on the host's first non-loopback IPv4 address, which the namespace
 * reaches through its default route without any forwarding.
 */
import { execFile } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { createNetnsHost, netnsSupported, type NetnsHost } from '../../test/helpers/netns';

export interface CellNetwork {
  host: NetnsHost;
  /** host:port of the state Redis as seen from inside the namespace. */
  redisUrl: string;
  /** Address the cells outside the namespace listen on. */
  rootAddress: string;
  partitioned: boolean;
  cut(): Promise<void>;
  heal(): Promise<void>;
  close(): Promise<void>;
}

function ip(args: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile('ip', args, (err, _out, stderr) =>
      err ? reject(new Error(`ip ${args.join(' ')}: ${stderr}`)) : resolve(),
    ),
  );
}

/** The host's first non-loopback IPv4 address that is not a test namespace's gateway. */
export function rootAddress(): string | undefined {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name.startsWith('sfr') || name.startsWith('veth') || name.startsWith('docker')) continue;
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

/** Forwards `listenHost:<free port>` to 127.0.0.1:`target`. */
async function forward(listenHost: string, target: number): Promise<{ port: number; close(): void }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1');
    sockets.add(client).add(upstream);
    const done = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.pipe(upstream).pipe(client);
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  });
  await new Promise<void>((r) => server.listen(0, listenHost, r));
  return {
    port: (server.address() as { port: number }).port,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** A namespace for one cell, or a reason why none can be made here. */
export async function createCellNetwork(stateRedisPort: number): Promise<CellNetwork | string> {
  if (!(await netnsSupported())) return 'network namespaces need root with CAP_NET_ADMIN and iproute2';
  const root = rootAddress();
  if (!root) return 'the host has no non-loopback IPv4 address for the other cells';
  const host = await createNetnsHost();
  const fwd = await forward(host.gateway, stateRedisPort);
  const net: CellNetwork = {
    host,
    redisUrl: `redis://${host.gateway}:${fwd.port}`,
    rootAddress: root,
    partitioned: false,
    async cut() {
      await ip(['link', 'set', host.vethRoot, 'down']);
      net.partitioned = true;
    },
    async heal() {
      await ip(['link', 'set', host.vethRoot, 'up']);
      net.partitioned = false;
    },
    async close() {
      fwd.close();
      await host.cleanup();
    },
  };
  return net;
}
