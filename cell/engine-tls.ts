/**
 * The cell's certificate as engines use it (docs/tls.md, Engines with certificates): each
 * instance keeps copies of the certificate, key and platform CA in its volume (`tls/`), owned by
 * the engine's user, because PostgreSQL refuses a key others can read, redis-server runs as its
 * own user and a container sees only the volume. Copied on every start, so a renewed certificate
 * takes effect at the next one.
 */
import { chmod, chown, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { RunAs } from './run-command';

/** PEM files on the cell's host: its certificate and key, and the CA that verifies its peers. */
export interface EngineTlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

export interface EngineTlsPaths {
  dir: string;
  cert: string;
  key: string;
  ca: string;
}

/** Where an instance keeps its copies of the TLS files: in its volume, beside the data directory. */
export function engineTlsPaths(volumeDir: string): EngineTlsPaths {
  const dir = path.join(volumeDir, 'tls');
  return { dir, cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key'), ca: path.join(dir, 'ca.crt') };
}

/** Copies the cell's files into the instance's volume, the key readable by its owner only. */
export function copyEngineTlsFiles(
  tls: EngineTlsFiles,
  volumeDir: string,
  runAs: RunAs | undefined,
): Promise<EngineTlsPaths> {
  return copyTlsFiles(tls, engineTlsPaths(volumeDir), runAs);
}

/** Copies certificate, key and CA to `files`, the key readable by `runAs` (or the cell) only. */
export async function copyTlsFiles(
  tls: EngineTlsFiles,
  files: EngineTlsPaths,
  runAs: RunAs | undefined,
): Promise<EngineTlsPaths> {
  await mkdir(files.dir, { recursive: true, mode: 0o700 });
  await copyFile(tls.certFile, files.cert);
  await copyFile(tls.caFile, files.ca);
  await writeFile(files.key, await readFile(tls.keyFile), { mode: 0o600 });
  await chmod(files.key, 0o600);
  if (runAs) for (const f of [files.dir, files.cert, files.ca, files.key]) await chown(f, runAs.uid, runAs.gid);
  return files;
}

/**
 * True when the source files differ from the instance's copies (a renewed or replaced
 * certificate): the engine then copies them again and reloads. Compared by content, so a file
 * rewritten with the same bytes changes nothing; a source that cannot be read changes nothing
 * either (the engine keeps what it serves).
 */
export async function tlsFilesChanged(tls: EngineTlsFiles, volumeDir: string): Promise<boolean> {
  const copies = engineTlsPaths(volumeDir);
  const pairs: Array<[string, string]> = [
    [tls.certFile, copies.cert],
    [tls.keyFile, copies.key],
    [tls.caFile, copies.ca],
  ];
  for (const [source, copy] of pairs) {
    const wanted = await readFile(source).catch(() => undefined);
    if (!wanted) return false;
    const have = await readFile(copy).catch(() => undefined);
    if (!have || !have.equals(wanted)) return true;
  }
  return false;
}
