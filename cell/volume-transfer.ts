/**
 * Cell-to-cell copies of a directory tree over TCP (snapshots; docs/volumes.md). The cell that
 * holds the data serves it on its transfer port to a peer that presents a token the source was
 * given by an order; the receiving cell pulls, so it drives the copy and reports its progress.
 *
 * Per file the stream carries its bytes and a SHA-256 the receiver checks before it renames the
 * file into place: a file is either absent, or complete and verified; each pass ends with the
 * files it wrote (an fsync each, or a syncfs when there are many) and every directory on disk,
 * before the pass reports success. The
 * receiver keeps a record of what it verified (`.sf-transfer.json`) and tells the source what it
 * already has, so a copy interrupted by a dead peer or a lost connection resumes where it stopped
 * instead of starting over, and a second pass over a changed tree sends only what changed (by
 * size and modification time, as rsync decides).
 *
 * Where the platform CA exists (`sf cell --ca-dir`, docs/tls.md) the stream is TLS both ways: the
 * source serves with its cell certificate and asks the receiver for one; each side accepts only a
 * certificate the platform CA signed, and the token is still required on top.
 *
 * Wire format, source to receiver after the receiver's request line
 * `{"token", "have": {path: signature}}\n`: frames of one type byte and a u32-length JSON header;
 * a file frame (`F`) is followed by chunks (u32 length + bytes, length 0 ends the file) and the
 * 32-byte digest. `D` a directory, `L` a symbolic link, `E` the end (every path of the source
 * tree), `X` an error.
 */
import { execFile } from 'node:child_process';
import { createHash, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  chmod,
  truncate,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { ErrorCode, SfError, errorMessageOf } from '../common';

/** The receiver's record of verified files, inside the destination; never part of the tree. */
export const TRANSFER_STATE_FILE = '.sf-transfer.json';
const PART_SUFFIX = '.sf-part';
const CHUNK = 1024 * 1024;

type FrameType = 'F' | 'A' | 'D' | 'L' | 'E' | 'X';

interface FileHeader {
  path: string;
  mode: number;
  mtimeMs: number;
  sig: string;
  /** `A` frames: the receiver's first `offset` bytes are the source's, only the rest is sent. */
  offset?: number;
}

/** What the receiver holds of a file: the source's signature, its size and its SHA-256. */
interface Held {
  sig: string;
  size: number;
  sha: string;
}

/** SHA-256 of the first `length` bytes of a file. */
async function hashPrefix(file: string, length: number): Promise<ReturnType<typeof createHash>> {
  const hash = createHash('sha256');
  if (length === 0) return hash;
  for await (const chunk of createReadStream(file, { start: 0, end: length - 1, highWaterMark: CHUNK }))
    hash.update(chunk as Buffer);
  return hash;
}

export interface TransferProgress {
  bytes: number;
  totalBytes: number | null;
}

export interface TransferResult {
  bytes: number;
  files: number;
  skipped: number;
}

interface Grant {
  dir: string;
  expiresAt: number;
}

/** size:mtime in ns: what decides that a file changed (rsync's quick check). */
function signature(size: bigint, mtimeNs: bigint): string {
  return `${size}:${mtimeNs}`;
}

/** Every entry under `root`, parents before children, paths relative and with `/`. */
async function walk(root: string, rel = ''): Promise<Array<{ rel: string; kind: 'file' | 'dir' | 'link' }>> {
  const out: Array<{ rel: string; kind: 'file' | 'dir' | 'link' }> = [];
  let names: string[];
  try {
    names = (await readdir(path.join(root, rel))).sort();
  } catch {
    return out;
  }
  for (const name of names) {
    const r = rel ? `${rel}/${name}` : name;
    if (!rel && name === TRANSFER_STATE_FILE) continue;
    const st = await lstat(path.join(root, r)).catch(() => null);
    if (!st) continue; // removed by the engine during the walk
    if (st.isDirectory()) {
      out.push({ rel: r, kind: 'dir' });
      out.push(...(await walk(root, r)));
    } else if (st.isSymbolicLink()) out.push({ rel: r, kind: 'link' });
    else if (st.isFile()) out.push({ rel: r, kind: 'file' });
  }
  return out;
}

/** Total size of the regular files of a tree, for progress. */
export async function treeBytes(root: string): Promise<number> {
  let total = 0;
  for (const e of await walk(root)) {
    if (e.kind !== 'file') continue;
    total += (await lstat(path.join(root, e.rel)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

function frame(type: FrameType, header: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** Writes honouring backpressure. */
function send(socket: net.Socket, data: Buffer): Promise<void> {
  if (socket.write(data)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      socket.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      socket.off('drain', onDrain);
      reject(new Error('connection closed'));
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

/**
 * The source side: one listener per cell. Trees are readable only through a grant (token, tree,
 * expiry) that an order installed; tokens are compared in constant time.
 */
export class TransferServer {
  private server: net.Server | undefined;
  private readonly grants = new Map<string, Grant>();

  /**
   * `tls`: the cell's certificate, its key and the platform CA; copies are TLS both ways then.
   * Set before `listen` (the cell reads its files as it starts).
   */
  constructor(
    private readonly host: string,
    public tls?: TransferTls,
  ) {}

  async listen(port = 0): Promise<number> {
    const serve = (socket: net.Socket): void => void this.serve(socket);
    // A receiver without a certificate from the platform CA fails the handshake: its token is
    // never even read.
    const server = this.tls
      ? tls.createServer({ ...this.tls, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, serve)
      : net.createServer(serve);
    if (this.tls) server.on('tlsClientError', () => undefined);
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.host, () => resolve());
    });
    return (server.address() as net.AddressInfo).port;
  }

  get port(): number | undefined {
    const addr = this.server?.address();
    return addr && typeof addr === 'object' ? addr.port : undefined;
  }

  allow(token: string, dir: string, ttlMs: number): void {
    const now = Date.now();
    for (const [t, g] of this.grants) if (g.expiresAt < now) this.grants.delete(t);
    this.grants.set(token, { dir, expiresAt: now + ttlMs });
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private grantFor(token: unknown): Grant | undefined {
    if (typeof token !== 'string') return undefined;
    const given = Buffer.from(token);
    for (const [t, g] of this.grants) {
      const want = Buffer.from(t);
      if (want.length === given.length && timingSafeEqual(want, given) && g.expiresAt >= Date.now()) return g;
    }
    return undefined;
  }

  private async serve(socket: net.Socket): Promise<void> {
    socket.on('error', () => undefined);
    socket.setNoDelay(true);
    try {
      const request = await readRequestLine(socket);
      const grant = this.grantFor(request.token);
      if (!grant) {
        await send(socket, frame('X', { message: 'transfer refused: unknown or expired token' }));
        socket.end();
        return;
      }
      const have = (request.have ?? {}) as Record<string, Held>;
      const entries = await walk(grant.dir);
      for (const e of entries) {
        const abs = path.join(grant.dir, e.rel);
        const st = await lstat(abs, { bigint: true }).catch(() => null);
        if (!st) continue;
        if (e.kind === 'dir') await send(socket, frame('D', { path: e.rel, mode: Number(st.mode) & 0o7777 }));
        else if (e.kind === 'link') await send(socket, frame('L', { path: e.rel, target: await readlink(abs) }));
        else {
          const sig = signature(st.size, st.mtimeNs);
          const held = have[e.rel];
          if (held?.sig === sig) continue;
          // An append-only file (a Redis AOF, a log) that grew: when the receiver's copy is a
          // prefix of it, only the new bytes travel; the prefix is read here, not sent.
          let offset = 0;
          if (held && held.size > 0 && Number(st.size) >= held.size) {
            const prefix = await hashPrefix(abs, held.size).catch(() => undefined);
            if (prefix?.digest('hex') === held.sha) offset = held.size;
          }
          const header: FileHeader = {
            path: e.rel,
            mode: Number(st.mode) & 0o7777,
            mtimeMs: Number(st.mtimeMs),
            sig,
            ...(offset ? { offset } : {}),
          };
          await send(socket, frame(offset ? 'A' : 'F', header));
          const hash = createHash('sha256');
          // Read whatever the file holds now: a file that changes while it is read gets another
          // signature at the next pass, which sends it again.
          for await (const chunk of createReadStream(abs, { start: offset, highWaterMark: CHUNK })) {
            const buf = chunk as Buffer;
            hash.update(buf);
            socket.write(u32(buf.length));
            await send(socket, buf);
          }
          await send(socket, Buffer.concat([u32(0), hash.digest()]));
        }
      }
      await send(socket, frame('E', { paths: entries.map((e) => e.rel) }));
      socket.end();
    } catch (err) {
      if (!socket.destroyed) {
        socket.write(frame('X', { message: errorMessageOf(err) }));
        socket.end();
      }
    }
  }
}

async function readRequestLine(socket: net.Socket): Promise<{ token?: unknown; have?: unknown }> {
  const reader = new SocketReader(socket);
  const parts: Buffer[] = [];
  for (;;) {
    const byte = await reader.read(1);
    if (byte[0] === 0x0a) break;
    parts.push(byte);
    if (parts.length > 64 * 1024 * 1024) throw new Error('request too long');
  }
  return JSON.parse(Buffer.concat(parts).toString('utf8')) as { token?: unknown; have?: unknown };
}

/** Pull-style exact reads from a socket, pausing it while nobody waits for bytes. */
class SocketReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly socket: net.Socket,
    /** Waiting longer than this for bytes fails the read (a dead or stuck peer); 0 = forever. */
    private readonly idleMs = 0,
  ) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.length += d.length;
      if (this.length > 4 * CHUNK) socket.pause();
      this.wake?.();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on('error', (err) => {
      this.error = err;
      this.wake?.();
    });
  }

  async read(n: number): Promise<Buffer> {
    while (this.length < n) {
      if (this.error) throw this.error;
      if (this.ended) throw new Error('connection closed before the transfer ended');
      this.socket.resume();
      let timer: NodeJS.Timeout | undefined;
      const waited = await new Promise<boolean>((resolve) => {
        this.wake = () => resolve(true);
        if (this.idleMs > 0) timer = setTimeout(() => resolve(false), this.idleMs);
      });
      clearTimeout(timer);
      this.wake = undefined;
      if (!waited) throw new Error(`the source sent nothing for ${this.idleMs} ms`);
    }
    let out: Buffer;
    const first = this.chunks[0];
    if (first.length >= n) {
      // The common case: no copy, a view of what arrived.
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0];
        const take = Math.min(c.length, n - off);
        c.copy(out, off, 0, take);
        off += take;
        if (take === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(take);
      }
    }
    this.length -= n;
    if (this.length <= 4 * CHUNK) this.socket.resume();
    return out;
  }
}

/** PEM of a cell's certificate and key, and of the platform CA that must have signed the peer's. */
export interface TransferTls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

/** Reads the cell's TLS files (`sf cell --ca-dir`) for the transfer port. */
export async function loadTransferTls(files: {
  certFile: string;
  keyFile: string;
  caFile: string;
}): Promise<TransferTls> {
  const [cert, key, ca] = await Promise.all([
    readFile(files.certFile),
    readFile(files.keyFile),
    readFile(files.caFile),
  ]);
  return { cert, key, ca };
}

export interface FetchTreeOptions {
  host: string;
  port: number;
  token: string;
  /** Present when the cell has a certificate from the platform CA: the copy runs over TLS. */
  tls?: TransferTls;
  dest: string;
  /** Called at most every 250 ms and at the end. */
  onProgress?: (p: TransferProgress) => void;
  totalBytes?: number | null;
  /** @default 30000: no byte for this long fails the copy (a dead source) */
  idleTimeoutMs?: number;
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * The receiving side: pulls the tree granted to `token` into `dest`, resuming from what an
 * earlier pass verified. Every received file is fsynced and checked against the source's digest
 * before it is renamed into place; entries the source no longer has are removed; directories are
 * fsynced at the end, so what this resolves with is on the receiver's disk.
 */
export async function fetchTree(options: FetchTreeOptions): Promise<TransferResult> {
  const { dest } = options;
  await mkdir(dest, { recursive: true, mode: 0o700 });
  const statePath = path.join(dest, TRANSFER_STATE_FILE);
  let state: Record<string, Held> = {};
  try {
    state = JSON.parse(await readFile(statePath, 'utf8')) as Record<string, Held>;
  } catch {
    state = {};
  }
  // Offer only what is still there whole: a partial file was never recorded.
  const have: Record<string, Held> = {};
  for (const [rel, held] of Object.entries(state)) {
    const st = await lstat(path.join(dest, rel)).catch(() => null);
    if (typeof held === 'object' && st?.isFile() && st.size === held.size) have[rel] = held;
  }
  // The peer is identified by its chain to the platform CA (cell certificates name the cell's
  // advertised address, which need not be the address dialled); the token binds the copy.
  const socket = options.tls
    ? tls.connect({
        host: options.host,
        port: options.port,
        ...options.tls,
        minVersion: 'TLSv1.2',
        checkServerIdentity: () => undefined,
      })
    : net.connect({ host: options.host, port: options.port });
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once(options.tls ? 'secureConnect' : 'connect', resolve);
    socket.once('error', reject);
  }).catch((err: unknown) => {
    throw new SfError(
      ErrorCode.TransferFailed,
      `cannot reach ${options.host}:${options.port} for a copy: ${errorMessageOf(err)}`,
    );
  });
  // Only time spent waiting for the source counts: fsyncs under load may take long here.
  const reader = new SocketReader(socket, options.idleTimeoutMs ?? 30_000);
  const result: TransferResult = { bytes: 0, files: 0, skipped: Object.keys(have).length };
  let lastReport = 0;
  let lastSave = Date.now();
  // Files written since the last time they were made durable. A few are fsynced one by one: a
  // syncfs of the whole filesystem also waits for every other tenant's dirty data (a 40 MB copy
  // took 1.4-1.8 s instead of 0.5 s next to 1.5 GB of another process's unwritten data). Many
  // small files (a PostgreSQL cluster has a thousand) cost less in one syncfs than one fsync each.
  let unsynced: string[] = [];
  const syncWritten = async (): Promise<void> => {
    const files = unsynced;
    unsynced = [];
    if (files.length > FSYNC_EACH_MAX) await syncFs(dest);
    else await fsyncAll(files);
  };
  const report = (force = false): void => {
    const now = Date.now();
    if (!options.onProgress || (!force && now - lastReport < 250)) return;
    lastReport = now;
    options.onProgress({ bytes: result.bytes, totalBytes: options.totalBytes ?? null });
  };
  const saveState = async (): Promise<void> => {
    await writeFile(`${statePath}.tmp`, JSON.stringify(state));
    await rename(`${statePath}.tmp`, statePath);
  };
  try {
    socket.write(JSON.stringify({ token: options.token, have }) + '\n');
    for (;;) {
      const head = await reader.read(5);
      const type = head.toString('latin1', 0, 1) as FrameType;
      const header = JSON.parse((await reader.read(head.readUInt32BE(1))).toString('utf8')) as Record<string, unknown>;
      if (type === 'X') throw new SfError(ErrorCode.TransferFailed, `the source refused: ${String(header.message)}`);
      if (type === 'E') {
        const keep = new Set(header.paths as string[]);
        await removeExtra(dest, keep);
        for (const rel of Object.keys(state)) if (!keep.has(rel)) delete state[rel];
        break;
      }
      const rel = safeRel(String(header.path));
      const abs = path.join(dest, rel);
      if (type === 'D') {
        await mkdir(abs, { recursive: true });
        await chmod(abs, Number(header.mode));
      } else if (type === 'L') {
        await rm(abs, { force: true, recursive: true });
        await symlink(String(header.target), abs);
      } else {
        const h = header as unknown as FileHeader;
        const offset = type === 'A' ? (h.offset ?? 0) : 0;
        // An append goes into the verified copy itself: until it is verified and recorded, the
        // file's size no longer matches the record, so an interrupted append is sent whole next
        // time. The prefix is hashed again for the record of the whole file.
        const part = offset ? abs : abs + PART_SUFFIX;
        const whole = offset ? await hashPrefix(abs, offset) : createHash('sha256');
        const fh = await open(part, offset ? 'r+' : 'w', 0o600);
        const hash = createHash('sha256');
        let size = offset;
        try {
          for (;;) {
            const len = (await reader.read(4)).readUInt32BE(0);
            if (len === 0) break;
            const data = await reader.read(len);
            hash.update(data);
            whole.update(data);
            await fh.write(data, 0, data.length, size);
            size += len;
            result.bytes += len;
            report();
          }
          await fh.truncate(size);
        } finally {
          await fh.close();
        }
        const digest = await reader.read(32);
        if (!hash.digest().equals(digest)) {
          if (offset) await truncate(part, offset);
          else await rm(part, { force: true });
          throw new SfError(ErrorCode.TransferFailed, `checksum mismatch on ${rel}`);
        }
        await chmod(part, h.mode);
        await utimes(part, h.mtimeMs / 1000, h.mtimeMs / 1000);
        if (part !== abs) await rename(part, abs);
        unsynced.push(abs);
        state[rel] = { sig: h.sig, size, sha: whole.digest('hex') };
        result.files += 1;
        if (Date.now() - lastSave > 2_000) {
          // Recorded as verified only once on disk: a resumed copy trusts the record.
          await syncWritten();
          await saveState();
          lastSave = Date.now();
        }
      }
    }
    // The files this pass wrote (synced together, so the filesystem batches their journal
    // commits) and every directory are on disk before the pass reports success or records them.
    await syncWritten();
    await fsyncDirs(dest);
    await saveState();
    report(true);
    return result;
  } catch (err) {
    await saveState().catch(() => undefined);
    if (err instanceof SfError) throw err;
    throw new SfError(
      ErrorCode.TransferFailed,
      `copy from ${options.host}:${options.port} failed: ${errorMessageOf(err)}`,
    );
  } finally {
    socket.destroy();
  }
}

/** A path from the wire stays inside the destination. */
function safeRel(rel: string): string {
  const norm = path.posix.normalize(rel);
  if (!norm || norm.startsWith('..') || path.posix.isAbsolute(norm) || norm === TRANSFER_STATE_FILE)
    throw new SfError(ErrorCode.TransferFailed, `refusing path '${rel}' from the source`);
  return norm;
}

async function removeExtra(dest: string, keep: Set<string>): Promise<void> {
  const entries = await walk(dest);
  // Children first, so a directory is empty when its turn comes.
  for (const e of entries.reverse()) {
    if (keep.has(e.rel)) continue;
    await rm(path.join(dest, e.rel), { recursive: true, force: true });
  }
}

/** syncfs(2) of the filesystem holding `dir` (coreutils `sync -f`). */
function syncFs(dir: string): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile('sync', ['-f', dir], { timeout: 600_000 }, (err) =>
      err ? reject(new SfError(ErrorCode.TransferFailed, `sync -f ${dir} failed: ${err.message}`)) : resolve(),
    ),
  );
}

/** Up to this many files written since the last sync are fsynced one by one, more by one syncfs. */
const FSYNC_EACH_MAX = 64;

/** fsync of each file, several at a time (their journal commits are shared). */
async function fsyncAll(files: readonly string[], parallel = 16): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < files.length) await fsyncPath(files[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(parallel, files.length) }, worker));
}

async function fsyncDirs(dest: string): Promise<void> {
  await fsyncPath(dest);
  for (const e of await walk(dest)) if (e.kind === 'dir') await fsyncPath(path.join(dest, e.rel));
}

/** Removes the receiver's bookkeeping once a copy is complete and adopted. */
export async function dropTransferState(dest: string): Promise<void> {
  await rm(path.join(dest, TRANSFER_STATE_FILE), { force: true });
}
