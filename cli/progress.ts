/**
 * Progress of long work (`sf create-service --wait`; for `sf move`, `sf snapshot`, `sf images
 * build` too): on a terminal a cli-progress line with a spinner or a bar and the elapsed time,
 * redrawn in place; otherwise one plain line per change of status, so logs stay readable.
 * Always on stderr: stdout keeps the command's result (and `--json`).
 */
import { SingleBar } from 'cli-progress';

export interface Progress {
  /** The current step in words; with a total, `value` moves the bar. */
  update(status: string, value?: number): void;
  /** Stops redrawing; the caller prints the outcome. */
  stop(): void;
}

export interface ProgressOptions {
  /** @default process.stderr */
  stream?: NodeJS.WriteStream;
  /** With a total a bar is drawn, without one a spinner. */
  total?: number;
}

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

export function startProgress(what: string, options: ProgressOptions = {}): Progress {
  const stream = options.stream ?? process.stderr;
  const started = Date.now();
  const elapsed = (): string => `${((Date.now() - started) / 1000).toFixed(1)} s`;
  if (!stream.isTTY) {
    let last = '';
    return {
      update(status) {
        if (status === last) return;
        last = status;
        stream.write(`${what}: ${status} (${elapsed()})\n`);
      },
      stop() {},
    };
  }
  let frame = 0;
  let status = 'starting';
  const bar = new SingleBar({
    stream,
    hideCursor: true,
    clearOnComplete: true,
    fps: 10,
    format: (opts, params, payload: { status: string }) => {
      frame = (frame + 1) % SPINNER.length;
      const time = `${(params.startTime ? (Date.now() - params.startTime) / 1000 : 0).toFixed(1)} s`;
      if (!options.total) return `${SPINNER[frame]} ${what}: ${payload.status}  ${time}`;
      const width = opts.barsize ?? 30;
      const filled = Math.round((params.progress ?? 0) * width);
      return `${what} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${payload.status}  ${time}`;
    },
  });
  bar.start(options.total ?? 1, 0, { status });
  return {
    update(next, value) {
      status = next;
      if (value !== undefined) bar.update(value, { status });
      else bar.update({ status });
    },
    stop() {
      bar.stop();
    },
  };
}
