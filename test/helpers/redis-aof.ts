import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * Every part (base, increments) of a Redis volume's append-only file as text, to check which
 * writes an engine took; empty once the volume is gone.
 */
export async function aofText(dir: string): Promise<string> {
  let text = '';
  const entries = await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  for (const entry of entries)
    if (entry.isFile() && /\.aof/.test(entry.name))
      text += await readFile(path.join(entry.parentPath ?? dir, entry.name), 'latin1');
  return text;
}
