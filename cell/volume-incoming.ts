/**
 * The receiving side of a volume move (docs/volumes.md, Moving a volume): the copy of an
 * instance's data directory lands in `DATA_DIR/incoming/INSTANCE_ID/data`, outside `instances/`,
 * so the cell never mistakes a half-copied volume for an instance. Passes while the source runs
 * bring it close; the final pass, with the source stopped, makes it exact and writes `move-id`
 * after everything is fsynced. Only a spec whose `moveIn` names that move adopts it, with a
 * rename into `instances/`.
 */
import { mkdir, readFile, rename, rm, writeFile, open } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, SfError } from '../common';
import { readMeta, type VolumePaths } from './instance-volume';
import {
  dropTransferState,
  fetchTree,
  type TransferProgress,
  type TransferResult,
  type TransferTls,
} from './volume-transfer';

export const INCOMING_DIR = 'incoming';
const MOVE_ID_FILE = 'move-id';

export function incomingDir(cellDataDir: string, instanceId: string): string {
  return path.join(cellDataDir, INCOMING_DIR, instanceId);
}

export async function importVolume(
  cellDataDir: string,
  instanceId: string,
  moveId: string,
  source: { host: string; port: number; token: string; tls?: TransferTls },
  final: boolean,
  onProgress?: (p: TransferProgress) => void,
): Promise<TransferResult> {
  const dir = incomingDir(cellDataDir, instanceId);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // A copy of another move is reused (only what differs is sent) but no longer complete.
  await rm(path.join(dir, MOVE_ID_FILE), { force: true });
  const result = await fetchTree({ ...source, dest: path.join(dir, 'data'), onProgress });
  if (final) {
    const marker = path.join(dir, MOVE_ID_FILE);
    await writeFile(marker, moveId, { mode: 0o600 });
    const fh = await open(marker, 'r');
    await fh.sync();
    await fh.close();
  }
  return result;
}

/** Makes a complete incoming copy the instance's volume; throws when there is none for `moveId`. */
export async function adoptIncoming(cellDataDir: string, moveId: string, paths: VolumePaths): Promise<void> {
  if (await readMeta(paths)) return;
  const dir = incomingDir(cellDataDir, path.basename(paths.volumeDir));
  const recorded = await readFile(path.join(dir, MOVE_ID_FILE), 'utf8').catch(() => '');
  if (recorded.trim() !== moveId)
    throw new SfError(
      ErrorCode.TransferFailed,
      `no complete copy of move ${moveId} on this cell to start ${path.basename(paths.volumeDir)} from`,
      'moveIn',
    );
  await dropTransferState(path.join(dir, 'data'));
  await rm(paths.dataDir, { recursive: true, force: true });
  await mkdir(paths.volumeDir, { recursive: true, mode: 0o711 });
  await rename(path.join(dir, 'data'), paths.dataDir);
  await rm(dir, { recursive: true, force: true });
}

export async function dropIncoming(cellDataDir: string, instanceId: string): Promise<void> {
  await rm(incomingDir(cellDataDir, instanceId), { recursive: true, force: true });
}
