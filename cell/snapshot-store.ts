/**
 * The cell's snapshot store (docs/volumes.md, Snapshots): `DATA_DIR/snapshots/SNAPSHOT_ID/` with
 * `snapshot.json` (what it is) and `data/` (what an empty data directory becomes on restore).
 * A snapshot is complete or absent: it is written under a temporary name inside the instance's
 * volume (where the engine's helpers can write, in a container too), fsynced, and renamed into
 * the store.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile, chown } from 'node:fs/promises';
import path from 'node:path';
import type { EngineKind } from '../protocol';
import { ErrorCode, SfError } from '../common';
import { RESTORED_MARKER, type Engine, type EngineContext } from './engine';
import { readMeta, type VolumePaths } from './instance-volume';
import { pathExists as exists } from './path-exists';
import { runCommand } from './run-command';
import { dropTransferState, fetchTree, treeBytes, type TransferProgress, type TransferTls } from './volume-transfer';

export const SNAPSHOTS_DIR = 'snapshots';
export const SNAPSHOT_META = 'snapshot.json';

export interface SnapshotMeta {
  id: string;
  service: string;
  instanceId: string;
  engine: EngineKind;
  /** Bytes of `data/`. */
  bytes: number;
  createdAt: number;
}

export class SnapshotStore {
  readonly root: string;

  constructor(cellDataDir: string) {
    this.root = path.join(cellDataDir, SNAPSHOTS_DIR);
  }

  dir(id: string): string {
    return path.join(this.root, id);
  }

  dataDir(id: string): string {
    return path.join(this.dir(id), 'data');
  }

  async meta(id: string): Promise<SnapshotMeta | undefined> {
    try {
      return JSON.parse(await readFile(path.join(this.dir(id), SNAPSHOT_META), 'utf8')) as SnapshotMeta;
    } catch {
      return undefined;
    }
  }

  /** Ids of the complete snapshots in the store. */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return [];
    }
    const out: string[] = [];
    for (const n of names)
      if (!n.startsWith('.') && (await exists(path.join(this.root, n, SNAPSHOT_META)))) out.push(n);
    return out.sort();
  }

  /**
   * Takes a snapshot of a running instance with its engine's own means. Idempotent: a snapshot
   * already in the store is answered as it is.
   */
  async take(
    id: string,
    engine: Engine,
    ctx: EngineContext,
    owner: { uid: number; gid: number } | undefined,
  ): Promise<SnapshotMeta> {
    const done = await this.meta(id);
    if (done) return done;
    if (!engine.snapshot)
      throw new SfError(ErrorCode.EngineUnsupported, `engine ${engine.kind} has no snapshots`, 'engine');
    const work = path.join(ctx.volumeDir, `.snapshot-${id}`);
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { mode: 0o700 });
    if (owner) await chown(work, owner.uid, owner.gid);
    try {
      await engine.snapshot(ctx, work);
      // Owned by the cell from here on, and on disk before it counts as taken.
      await runCommand('chown', ['-R', `${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`, work]);
      await runCommand('sync', ['-f', work]).catch(() => undefined);
      const meta: SnapshotMeta = {
        id,
        service: ctx.spec.service,
        instanceId: ctx.spec.instanceId,
        engine: ctx.spec.engine,
        bytes: await treeBytes(work),
        createdAt: Date.now(),
      };
      const partial = path.join(this.root, `.${id}.partial`);
      await rm(partial, { recursive: true, force: true });
      await mkdir(partial, { recursive: true, mode: 0o700 });
      await rename(work, path.join(partial, 'data'));
      await writeFile(path.join(partial, SNAPSHOT_META), JSON.stringify(meta, null, 2), { mode: 0o600 });
      await rename(partial, this.dir(id));
      return meta;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /**
   * Copies a snapshot from a peer cell (volume-transfer.ts), resuming an interrupted copy of the
   * same snapshot; it joins the store only once complete and verified.
   */
  async import(
    id: string,
    source: { host: string; port: number; token: string; tls?: TransferTls },
    onProgress?: (p: TransferProgress) => void,
  ): Promise<SnapshotMeta> {
    const done = await this.meta(id);
    if (done) return done;
    const partial = path.join(this.root, `.${id}.partial`);
    await mkdir(partial, { recursive: true, mode: 0o700 });
    await fetchTree({ ...source, dest: partial, onProgress });
    await dropTransferState(partial);
    const meta = await this.meta(`.${id}.partial`);
    if (!meta || meta.id !== id)
      throw new SfError(ErrorCode.TransferFailed, `the copy of snapshot ${id} has no record`);
    await rename(partial, this.dir(id));
    return meta;
  }

  async delete(id: string): Promise<void> {
    await rm(this.dir(id), { recursive: true, force: true });
    await rm(path.join(this.root, `.${id}.partial`), { recursive: true, force: true });
  }

  /**
   * Fills a new volume's data directory from a snapshot before its first start. A volume that
   * already has a record is never touched: restore is for new volumes only.
   */
  async materialize(id: string, paths: VolumePaths, engine: EngineKind): Promise<void> {
    if (await readMeta(paths)) return;
    const meta = await this.meta(id);
    if (!meta) throw new SfError(ErrorCode.SnapshotFailed, `snapshot ${id} is not in this cell's store`, 'restoreFrom');
    if (meta.engine !== engine)
      throw new SfError(
        ErrorCode.SnapshotFailed,
        `snapshot ${id} is of engine ${meta.engine}, not ${engine}`,
        'restoreFrom',
      );
    // A half-made copy from a crash is started over.
    await rm(paths.dataDir, { recursive: true, force: true });
    await mkdir(paths.volumeDir, { recursive: true, mode: 0o711 });
    await runCommand('cp', ['-a', this.dataDir(id), paths.dataDir], { timeoutMs: 3_600_000 });
    // PostgreSQL must give its platform roles this service's passwords before it listens.
    if (engine === 'postgres') await writeFile(path.join(paths.volumeDir, RESTORED_MARKER), id, { mode: 0o600 });
  }
}
