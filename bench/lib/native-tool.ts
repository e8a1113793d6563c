/**
 * The bench's own C programs (bench/native/*.c), compiled with the system's cc when a bench starts,
 * so that nothing in set-up or the tests needs them.
 */
import { join } from 'node:path';
import { runToCompletion } from './processes';

export type NativeToolBuild = { ok: true; path: string } | { ok: false; reason: string };

/** Compiles bench/native/NAME.c into `dir` with `libs` (e.g. `['-lssl', '-lcrypto']`). */
export async function buildNativeTool(
  name: string,
  dir: string,
  libs: readonly string[] = [],
): Promise<NativeToolBuild> {
  const source = join(__dirname, '..', '..', '..', 'bench', 'native', `${name}.c`);
  const path = join(dir, name);
  const r = await runToCompletion('cc', 'cc', ['-O2', '-o', path, source, ...libs], { timeoutMs: 60_000 });
  if (r.code !== 0) return { ok: false, reason: r.stderr.trim().split('\n')[0] ?? `cc exited ${r.code}` };
  return { ok: true, path };
}
