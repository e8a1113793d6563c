import { stat } from 'node:fs/promises';

/** True when something exists at `p` (a missing path is an answer, not an error). */
export async function pathExists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
