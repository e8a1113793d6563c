/**
 * Runs a real Router in the test process, fed by a real route file in a temp dir, with the
 * relay chosen by SF_RELAY (so the same suite runs on the JS and the native path).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRouteSource, Router, selectRelay, type RouteTableInput, type RouterOptions } from '../../router';
import { silentLogger } from '../../common/logger';

export interface RouterHarness {
  router: Router;
  file: string;
  /** Writes a new route file (the watcher picks it up). */
  writeRoutes(table: RouteTableInput): void;
  /** Writes the file and reloads at once, as SIGHUP does. */
  reload(table: RouteTableInput): Promise<void>;
  stop(): Promise<void>;
}

export async function startRouter(
  table: RouteTableInput,
  options: Partial<RouterOptions> = {},
): Promise<RouterHarness> {
  const dir = mkdtempSync(join(tmpdir(), 'sf-router-test-'));
  const file = join(dir, 'routes.json');
  const write = (t: RouteTableInput): void => writeFileSync(file, JSON.stringify(t));
  write(table);
  const router = new Router({ relay: selectRelay(), logger: silentLogger(), ...options });
  await router.start(new FileRouteSource(file, { debounceMs: 20 }));
  return {
    router,
    file,
    writeRoutes: write,
    async reload(t) {
      write(t);
      await router.reload();
    },
    async stop() {
      await router.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
