/**
 * Network fencing (step 3 of the fencing sequence) through rtnetlink with the `netlink` package: a blackhole or
 * prohibit route per peer address, or a link set down, in the network namespace the cell runs in.
 * Run inside a cell's namespace, it cuts that cell from its peers, so an old primary that is still
 * alive can neither receive client traffic nor reach its replicas; `unfence` lifts it.
 *
 * Every operation is idempotent (a route that already exists or is already gone is fine), since
 * fence orders may be retried.
 */
import ipaddr from 'ipaddr.js';
import { createRtNetlink, FlagsNew, type RtNetlinkSocket } from 'netlink';
import { ErrorCode, SfError, errorMessageOf } from '../common';

export type NetworkFenceMode = 'blackhole' | 'prohibit';

export interface NetworkFencerOptions {
  /** `blackhole` drops silently; `prohibit` fails connects fast with EACCES. @default 'prohibit' */
  mode?: NetworkFenceMode;
  /** Main routing table. @default 254 */
  table?: number;
}

const AF_INET = 2;
const AF_INET6 = 10;

/**
 * The address as rtnetlink wants it. ipaddr.js parses every textual form, including IPv4-mapped
 * IPv6 (`::ffff:10.0.0.1`), whose last 32 bits a hand-written parser once got wrong.
 */
export function addressBytes(address: string): { family: number; bytes: Buffer; bits: number } {
  if (!ipaddr.isValid(address) || (ipaddr.IPv4.isValid(address) && !ipaddr.IPv4.isValidFourPartDecimal(address)))
    throw new SfError(ErrorCode.InvalidOption, `not an IP address: '${address}'`, 'peers');
  const parsed = ipaddr.parse(address);
  return parsed.kind() === 'ipv4'
    ? { family: AF_INET, bytes: Buffer.from(parsed.toByteArray()), bits: 32 }
    : { family: AF_INET6, bytes: Buffer.from(parsed.toByteArray()), bits: 128 };
}

/** The errno name of a rejected request; netlink 0.3 only puts it in the message text. */
function errno(err: unknown): string | undefined {
  const code = (err as { code?: string }).code;
  if (code) return code;
  return /Request rejected: (\w+)/.exec(err instanceof Error ? err.message : '')?.[1];
}

export class NetworkFencer {
  private readonly mode: NetworkFenceMode;
  private readonly table: number;
  private socket: RtNetlinkSocket | undefined;

  constructor(options: NetworkFencerOptions = {}) {
    this.mode = options.mode ?? 'prohibit';
    this.table = options.table ?? 254;
  }

  /** Adds a route of the fence type for each peer address (a /32 or /128). */
  async fence(peers: string[]): Promise<void> {
    for (const peer of peers) {
      const { family, bytes, bits } = addressBytes(peer);
      try {
        await this.rt().newRoute(
          {
            family,
            dstLen: bits,
            table: this.table,
            protocol: 'STATIC',
            scope: 'UNIVERSE',
            type: this.mode === 'blackhole' ? 'BLACKHOLE' : 'PROHIBIT',
          },
          { dst: bytes },
          { flags: FlagsNew.CREATE | FlagsNew.EXCL },
        );
      } catch (err) {
        if (errno(err) !== 'EEXIST')
          throw new SfError(ErrorCode.FenceFailed, `fencing ${peer} failed: ${errorMessageOf(err)}`);
      }
    }
  }

  async unfence(peers: string[]): Promise<void> {
    for (const peer of peers) {
      const { family, bytes, bits } = addressBytes(peer);
      try {
        await this.rt().delRoute(
          { family, dstLen: bits, table: this.table, type: this.mode === 'blackhole' ? 'BLACKHOLE' : 'PROHIBIT' },
          { dst: bytes },
        );
      } catch (err) {
        if (errno(err) !== 'ESRCH' && errno(err) !== 'ENOENT')
          throw new SfError(ErrorCode.FenceFailed, `unfencing ${peer} failed: ${errorMessageOf(err)}`);
      }
    }
  }

  /** The coarse fence: the whole link down (e.g. the cell's veth). */
  async setLinkUp(ifname: string, up: boolean): Promise<void> {
    const links = await this.rt().getLinks();
    const link = links.find((l) => l.attrs.ifname === ifname);
    if (!link) throw new SfError(ErrorCode.FenceFailed, `no link named ${ifname}`);
    // Flags absent from `flags` but present in `change` are cleared.
    await this.rt().setLink({ index: link.data.index, flags: up ? { up: true } : {}, change: { up: true } });
  }

  close(): void {
    this.socket?.socket.close();
    this.socket = undefined;
  }

  private rt(): RtNetlinkSocket {
    if (!this.socket) {
      this.socket = createRtNetlink();
      // The socket must not keep the process alive on its own.
      this.socket.socket.unref();
    }
    return this.socket;
  }
}
