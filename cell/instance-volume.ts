/**
 * An instance's volume on the cell: `{cellDataDir}/instances/{instanceId}/` holding the engine's
 * data directory (`data/`), its log (`instance.log`) and `sf-instance.json`, the cell's record of
 * the instance. That record is what lets a restarted cell find its instances again, and it holds
 * the highest epoch ever accepted for the instance, which is what the stale-primary check
 * compares against: it lives with the data, so it survives anything the data survives.
 */
import { chmod, chown, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { EngineKind, ExecutorKind, InstanceRole, InstanceSpec, SidecarActual } from '../protocol';
import { ErrorCode, SfError } from '../common';
import { runCommand, type RunAs } from './run-command';

export const INSTANCES_DIR = 'instances';
export const META_FILE = 'sf-instance.json';

export interface VolumePaths {
  volumeDir: string;
  dataDir: string;
  logFile: string;
  metaFile: string;
}

export interface InstanceMeta {
  instanceId: string;
  service: string;
  engine: EngineKind;
  executor: ExecutorKind;
  role: InstanceRole;
  /** Highest epoch this instance was ever started or promoted with. */
  highestEpoch: number;
  port: number | null;
  pid: number | null;
  generation: number;
  sizeMb: number;
  /** The last spec it was started with, so a restarted cell can report it fully. */
  spec: InstanceSpec;
  /** Its running sidecars (ports and processes), so a restarted cell adopts them too. */
  sidecars?: SidecarActual[];
  updatedAt: number;
}

export function volumePaths(cellDataDir: string, instanceId: string): VolumePaths {
  const volumeDir = path.join(cellDataDir, INSTANCES_DIR, instanceId);
  return {
    volumeDir,
    dataDir: path.join(volumeDir, 'data'),
    logFile: path.join(volumeDir, 'instance.log'),
    metaFile: path.join(volumeDir, META_FILE),
  };
}

export async function readMeta(paths: VolumePaths): Promise<InstanceMeta | undefined> {
  try {
    return JSON.parse(await readFile(paths.metaFile, 'utf8')) as InstanceMeta;
  } catch {
    return undefined;
  }
}

/** Written with rename so a crash never leaves half a record (and never loses the epoch). */
export async function writeMeta(paths: VolumePaths, meta: InstanceMeta): Promise<void> {
  const tmp = `${paths.metaFile}.tmp`;
  // 0600: the record holds the instance's spec, credentials included.
  await writeFile(tmp, JSON.stringify({ ...meta, updatedAt: Date.now() }, null, 2), { mode: 0o600 });
  await rename(tmp, paths.metaFile);
}

/**
 * Refuses a primary whose epoch is older than one this instance already had: that is a deposed
 * primary coming back, and letting it serve would split the brain (DESIGN.md, epochs).
 */
export function checkEpoch(meta: InstanceMeta | undefined, spec: InstanceSpec): void {
  if (spec.role === 'primary' && meta && spec.epoch < meta.highestEpoch) {
    throw new SfError(
      ErrorCode.StaleEpoch,
      `instance ${spec.instanceId}: refusing to start as primary with epoch ${spec.epoch}, it already had epoch ${meta.highestEpoch}`,
      'epoch',
    );
  }
}

/** Creates the volume (if new), checks the epoch and records the spec about to start. */
export async function admitStart(
  cellDataDir: string,
  spec: InstanceSpec,
  executor: ExecutorKind,
  port: number | null,
): Promise<{ paths: VolumePaths; meta: InstanceMeta }> {
  const paths = volumePaths(cellDataDir, spec.instanceId);
  await mkdir(paths.dataDir, { recursive: true, mode: 0o700 });
  const previous = await readMeta(paths);
  checkEpoch(previous, spec);
  const meta: InstanceMeta = {
    instanceId: spec.instanceId,
    service: spec.service,
    engine: spec.engine,
    executor,
    role: spec.role,
    highestEpoch: Math.max(previous?.highestEpoch ?? 0, spec.epoch),
    port,
    pid: null,
    generation: spec.generation,
    sizeMb: spec.volume.sizeMb,
    spec,
    updatedAt: Date.now(),
  };
  await writeMeta(paths, meta);
  return { paths, meta };
}

/** Mode of a volume directory: the cell's, searchable so the engine's user reaches `data/` in it. */
export const VOLUME_DIR_MODE = 0o711;
/** Mode of the engine's data directory: its user's alone. */
export const DATA_DIR_MODE = 0o700;

/**
 * Gives the engine's data directory to the user it runs as (0700, everything in it theirs) and
 * keeps the rest of the volume the cell's: the record (`sf-instance.json`, with the highest epoch
 * the stale-primary check trusts) and the log are 0600 files an engine cannot rewrite. With no
 * `owner` (a cell that is not root) everything stays the cell's user's, with the same modes.
 */
export async function secureVolume(paths: VolumePaths, owner: RunAs | undefined, recursive: boolean): Promise<void> {
  await chmod(paths.volumeDir, VOLUME_DIR_MODE);
  await chmod(paths.dataDir, DATA_DIR_MODE);
  for (const file of [paths.metaFile, paths.logFile]) await chmod(file, 0o600).catch(() => undefined);
  // Configuration files may hold credentials (masterauth, primary_conninfo): nothing in the data
  // directory is for group or others.
  if (recursive) await runCommand('chmod', ['-R', 'go-rwx', paths.dataDir]);
  if (!owner) return;
  if (recursive) await runCommand('chown', ['-R', `${owner.uid}:${owner.gid}`, paths.dataDir]);
  else await chown(paths.dataDir, owner.uid, owner.gid);
}

/** Applies a promotion to the record: role primary, epoch raised (never lowered). */
export async function recordPromotion(cellDataDir: string, instanceId: string, epoch: number): Promise<InstanceMeta> {
  const paths = volumePaths(cellDataDir, instanceId);
  const meta = await readMeta(paths);
  if (!meta) throw new SfError(ErrorCode.InstanceNotFound, `no volume for instance ${instanceId}`);
  const next: InstanceMeta = {
    ...meta,
    role: 'primary',
    highestEpoch: Math.max(meta.highestEpoch, epoch),
    spec: { ...meta.spec, role: 'primary', epoch, replicaOf: undefined },
  };
  await writeMeta(paths, next);
  return next;
}

/** Every volume on the cell with its record (volumes without a readable record are skipped). */
export async function listVolumes(cellDataDir: string): Promise<Array<{ paths: VolumePaths; meta: InstanceMeta }>> {
  let names: string[];
  try {
    names = await readdir(path.join(cellDataDir, INSTANCES_DIR));
  } catch {
    return [];
  }
  const out: Array<{ paths: VolumePaths; meta: InstanceMeta }> = [];
  for (const name of names) {
    const paths = volumePaths(cellDataDir, name);
    const meta = await readMeta(paths);
    if (meta) out.push({ paths, meta });
  }
  return out;
}
