/**
 * Reads a socket into one reused buffer and writes each chunk straight to its peer.
 *
 * Node's default read path allocates a fresh 64 KiB Buffer per read. On a relay that is a
 * steady stream of external memory, which V8 answers with full collections whose cost grows
 * with the heap: measured, that doubled the router's CPU time per relayed byte. With `onread`
 * the socket reads into our buffer instead; the buffer is reused whenever the peer took the
 * previous chunk synchronously, and replaced only while a write still refers to it.
 */
import type { Socket } from 'node:net';

/**
 * Buffers start small, because a router holds thousands of mostly idle database connections,
 * and grow when reads fill them, because bulk transfers want few large reads.
 */
const FIRST_BUFFER_BYTES = 1024;
const MAX_BUFFER_BYTES = 64 * 1024;
/** Consecutive reads using under a quarter of a grown buffer before it shrinks back. */
const SMALL_READS_BEFORE_SHRINK = 16;
const FORWARDER = Symbol('sf.readForwarder');

/** `SF_JS_RELAY_READ=events` keeps Node's own read path (one Buffer per read), e.g. to compare. */
export const FORWARDERS_ENABLED = process.env.SF_JS_RELAY_READ !== 'events';

export interface OnReadOption {
  buffer: () => Uint8Array;
  callback: (bytes: number, buffer: Uint8Array) => boolean;
}

export class ReadForwarder {
  private buffer: Buffer | undefined;
  private bufferInFlight = false;
  private size = FIRST_BUFFER_BYTES;
  private smallReads = 0;
  private target: Socket | undefined;
  /** Bytes read before a target was attached (rare: data racing the relay's start). */
  private early: Buffer[] = [];

  readonly onread: OnReadOption = {
    buffer: () => {
      if (!this.buffer || this.bufferInFlight || this.buffer.length !== this.size) {
        this.buffer = Buffer.allocUnsafeSlow(this.size);
        this.bufferInFlight = false;
      }
      return this.buffer;
    },
    callback: (bytes, buffer) => {
      const chunk = (buffer as Buffer).subarray(0, bytes);
      this.adapt(bytes, buffer.length);
      const target = this.target;
      if (!target) {
        this.early.push(Buffer.from(chunk));
        return true;
      }
      const flushed = target.write(chunk);
      // A write that did not complete at once still points into this buffer.
      if (target.writableLength > 0) this.bufferInFlight = true;
      return flushed;
    },
  };

  /** Grows the buffer on full reads (bulk), shrinks it after a run of small ones (idle, chatty). */
  private adapt(bytes: number, capacity: number): void {
    if (bytes === capacity) {
      this.smallReads = 0;
      if (this.size < MAX_BUFFER_BYTES) this.size *= 4;
    } else if (
      this.size > FIRST_BUFFER_BYTES &&
      bytes < capacity / 4 &&
      ++this.smallReads >= SMALL_READS_BEFORE_SHRINK
    ) {
      this.smallReads = 0;
      this.size = FIRST_BUFFER_BYTES;
    }
  }

  /** From now on every chunk read goes to `target`; returns whether it still has room. */
  forwardTo(target: Socket): void {
    this.target = target;
    for (const chunk of this.early) target.write(chunk);
    this.early = [];
  }
}

/** Marks a socket created with `forwarder.onread`, so the JS relay uses it. */
export function tagForwarder(socket: Socket, forwarder: ReadForwarder): Socket {
  (socket as Socket & { [FORWARDER]?: ReadForwarder })[FORWARDER] = forwarder;
  return socket;
}

export function forwarderOf(socket: Socket): ReadForwarder | undefined {
  return (socket as Socket & { [FORWARDER]?: ReadForwarder })[FORWARDER];
}

interface ReadableHandle {
  reading?: boolean;
  readStart?: () => number;
}

/**
 * Restarts reading on a socket whose forwarder callback asked to stop. Such a socket never
 * pushes into its readable state, so `resume()` alone may not reach the handle again.
 */
export function resumeForwarded(socket: Socket): void {
  socket.resume();
  const handle = (socket as Socket & { _handle?: ReadableHandle | null })._handle;
  if (handle && handle.reading === false && typeof handle.readStart === 'function' && !socket.destroyed) {
    handle.reading = true;
    handle.readStart();
  }
}
