/**
 * Runs Debian's redis-benchmark against one address and parses its CSV output, which carries
 * throughput and the latency percentiles (redis-benchmark 6+), so no second tool is needed
 * for p50/p99.
 */
import { runToCompletion } from './processes';

export interface RedisBenchOptions {
  host: string;
  port: number;
  /** Parallel connections (`-c`); the DESIGN targets use 50. */
  clients: number;
  /** Total requests per command (`-n`). */
  requests: number;
  /** Commands in flight per connection (`-P`); 1 means no pipelining. */
  pipeline: number;
  /** Commands to run (`-t`), e.g. ['get', 'set']. */
  tests: readonly string[];
  /** Connect over TLS, verifying against `caFile` (`--tls --cacert`, `--sni`). */
  tls?: { caFile: string; sni?: string };
  /** `false`: a new connection per request (`-k 0`). @default true */
  keepAlive?: boolean;
}

export interface RedisBenchRow {
  test: string;
  rps: number;
  avgMs: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
}

function parseCsvLine(line: string): string[] {
  return line.split(',').map((cell) => cell.trim().replace(/^"|"$/g, ''));
}

export function parseRedisBenchCsv(text: string): RedisBenchRow[] {
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('"'));
  const headerIndex = lines.findIndex((l) => l.startsWith('"test"'));
  if (headerIndex < 0) throw new Error(`redis-benchmark printed no CSV header:\n${text.slice(0, 2000)}`);
  const header = parseCsvLine(lines[headerIndex]);
  const col = (name: string): number => {
    const i = header.indexOf(name);
    if (i < 0) throw new Error(`redis-benchmark CSV lacks column ${name}`);
    return i;
  };
  const rows: RedisBenchRow[] = [];
  for (const line of lines.slice(headerIndex + 1)) {
    const cells = parseCsvLine(line);
    rows.push({
      test: cells[col('test')].toLowerCase(),
      rps: Number(cells[col('rps')]),
      avgMs: Number(cells[col('avg_latency_ms')]),
      p50Ms: Number(cells[col('p50_latency_ms')]),
      p95Ms: Number(cells[col('p95_latency_ms')]),
      p99Ms: Number(cells[col('p99_latency_ms')]),
      maxMs: Number(cells[col('max_latency_ms')]),
    });
  }
  return rows;
}

export async function runRedisBenchmark(options: RedisBenchOptions): Promise<RedisBenchRow[]> {
  const args = [
    '-h',
    options.host,
    '-p',
    String(options.port),
    '-c',
    String(options.clients),
    '-n',
    String(options.requests),
    '-P',
    String(options.pipeline),
    '-t',
    options.tests.join(','),
    '--csv',
    ...(options.keepAlive === false ? ['-k', '0'] : []),
    ...(options.tls
      ? ['--tls', '--cacert', options.tls.caFile, ...(options.tls.sni ? ['--sni', options.tls.sni] : [])]
      : []),
  ];
  // A stuck proxy must fail the sample rather than hang the whole run.
  const result = await runToCompletion('redis-benchmark', 'redis-benchmark', args, { timeoutMs: 300_000 });
  if (result.code !== 0) throw new Error(`redis-benchmark exited ${result.code}: ${result.stderr.slice(0, 2000)}`);
  const rows = parseRedisBenchCsv(result.stdout);
  if (rows.length !== options.tests.length) {
    throw new Error(
      `redis-benchmark returned ${rows.length} rows for ${options.tests.length} tests:\n${result.stdout}${result.stderr}`,
    );
  }
  return rows;
}

export async function redisBenchmarkVersion(): Promise<string> {
  const result = await runToCompletion('redis-benchmark', 'redis-benchmark', ['--version']);
  return result.stdout.trim();
}
