/**
 * iperf3 bulk throughput through one address. The server side is a long-running `iperf3 -s`
 * started by the harness; the client is run per sample with `-J` so its JSON report is parsed
 * instead of scraping text.
 */
import { runToCompletion, sleep } from './processes';

export interface IperfOptions {
  host: string;
  port: number;
  seconds: number;
  /** Parallel streams (`-P`); 1 measures one relayed connection. */
  streams: number;
  /**
   * The client's congestion control (`-C`), e.g. `cubic`: with the system's BBR, which paces
   * with a timer per burst, the client's own pacing can be what limits every column.
   */
  congestion?: string;
}

export interface IperfResult {
  /** Receiver-side throughput, which counts only bytes that made it through. */
  gbitPerSecond: number;
  senderGbitPerSecond: number;
  retransmits: number;
}

interface IperfJson {
  error?: string;
  end?: {
    sum_received?: { bits_per_second?: number };
    sum_sent?: { bits_per_second?: number; retransmits?: number };
  };
}

export function parseIperfJson(text: string): IperfResult {
  const data = JSON.parse(text) as IperfJson;
  if (data.error) throw new Error(`iperf3: ${data.error}`);
  const received = data.end?.sum_received?.bits_per_second;
  const sent = data.end?.sum_sent?.bits_per_second;
  if (received === undefined || sent === undefined) throw new Error('iperf3 JSON lacks end.sum_received/sum_sent');
  return {
    gbitPerSecond: received / 1e9,
    senderGbitPerSecond: sent / 1e9,
    retransmits: data.end?.sum_sent?.retransmits ?? 0,
  };
}

export async function runIperf(options: IperfOptions): Promise<IperfResult> {
  const args = [
    '-c',
    options.host,
    '-p',
    String(options.port),
    '-t',
    String(options.seconds),
    '-P',
    String(options.streams),
    '-J',
    ...(options.congestion ? ['-C', options.congestion] : []),
  ];
  let lastError = '';
  // The single-test iperf3 server answers "busy" for a moment after the previous client;
  // a short retry keeps that from failing a sample.
  for (let attempt = 0; attempt < 5; attempt++) {
    const result = await runToCompletion('iperf3', 'iperf3', args, { timeoutMs: (options.seconds + 30) * 1000 });
    try {
      return parseIperfJson(result.stdout);
    } catch (err) {
      lastError = `${String(err)} ${result.stderr.slice(0, 500)}`;
      if (!/busy|connect|reset/i.test(lastError)) break;
      await sleep(500);
    }
  }
  throw new Error(`iperf3 to ${options.host}:${options.port} failed: ${lastError}`);
}

export async function iperfVersion(): Promise<string> {
  const result = await runToCompletion('iperf3', 'iperf3', ['--version']);
  return result.stdout.split('\n')[0].trim();
}
