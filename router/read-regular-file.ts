/**
 * Reads a file the router was pointed at (route file, cache file) only when it is a regular
 * file. A FIFO at that path would block the read forever in libuv's thread pool, wedging reloads
 * and shutdown; a directory or a device is no route file either.
 */
import { constants, type Stats } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { ErrorCode, SfError } from '../common';

function cannotRead(what: string, path: string, err: unknown, field: string): SfError {
  return new SfError(
    ErrorCode.RouteSource,
    `cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    field,
  );
}

function kindOf(s: Stats): string {
  if (s.isFIFO()) return 'a FIFO';
  if (s.isDirectory()) return 'a directory';
  if (s.isCharacterDevice() || s.isBlockDevice()) return 'a device';
  if (s.isSocket()) return 'a socket';
  return 'not a regular file';
}

function notRegular(what: string, path: string, s: Stats, field: string): SfError {
  return new SfError(ErrorCode.InvalidOption, `${what} ${path} is ${kindOf(s)}, not a regular file`, field);
}

/** The file's text; SfError naming `field` when it is missing, unreadable or not a regular file. */
export async function readRegularFile(path: string, what: string, field: string): Promise<string> {
  let before;
  try {
    before = await stat(path);
  } catch (err) {
    throw cannotRead(what, path, err, field);
  }
  if (!before.isFile()) throw notRegular(what, path, before, field);
  let handle;
  try {
    // O_NONBLOCK: should the path become a FIFO between stat and open, open returns at once
    // instead of waiting for a writer; fstat below then refuses it. O_NOCTTY for a terminal.
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    throw cannotRead(what, path, err, field);
  }
  try {
    const after = await handle.stat();
    if (!after.isFile()) throw notRegular(what, path, after, field);
    return await handle.readFile('utf8');
  } catch (err) {
    if (err instanceof SfError) throw err;
    throw cannotRead(what, path, err, field);
  } finally {
    await handle.close();
  }
}
