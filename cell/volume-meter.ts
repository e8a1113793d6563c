/**
 * Disk usage of volumes (docs/volumes.md). A cell measures each volume with `du` every
 * `volumeCheckMs` (15 s by default), not on every heartbeat: a tree walk of a large PostgreSQL
 * cluster costs real I/O, and a size limit is an alarm with a grace of one interval, not a quota.
 */
import { execFile } from 'node:child_process';

/** @default 15000 ms between two measurements of every volume on a cell */
export const DEFAULT_VOLUME_CHECK_MS = 15_000;

const MIB = 1024 * 1024;

/** Bytes the directory occupies on disk (allocated blocks, as a quota would count them). */
export async function measureDirBytes(dir: string): Promise<number> {
  // -s one total, -k KiB blocks, -x do not cross into another filesystem mounted inside. A file
  // an engine removes during the walk (a PostgreSQL temp file, an AOF being rewritten) makes du
  // exit 1 while its total is still right, so the total is read whatever the exit code.
  const out = await new Promise<string>((resolve, reject) =>
    execFile(
      'du',
      ['-skx', dir],
      { timeout: 60_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
      (err, stdout) => (stdout.trim() ? resolve(stdout) : reject(err ?? new Error(`du printed nothing for ${dir}`))),
    ),
  );
  const kib = Number(out.trim().split(/\s+/)[0]);
  if (!Number.isFinite(kib)) throw new Error(`du printed '${out.trim()}' for ${dir}`);
  return kib * 1024;
}

/** MiB, rounded up, so a volume one byte over its size reads as over. */
export function toMb(bytes: number): number {
  return Math.ceil(bytes / MIB);
}

/** Full once usage reaches the size: writes are refused before the volume overflows, not after. */
export function isFull(usedMb: number, sizeMb: number): boolean {
  return usedMb >= sizeMb;
}
