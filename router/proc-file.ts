import { readFileSync } from 'node:fs';

/**
 * The first capture of `pattern` in a /proc file (e.g. `Max open files` of /proc/self/limits);
 * undefined where the file cannot be read (no /proc) or does not say.
 */
export function readProcField(file: string, pattern: RegExp): string | undefined {
  try {
    return pattern.exec(readFileSync(file, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}
