/**
 * Control reads its HTTPS certificate when it starts; this serves a renewed one without a restart.
 * The pair's files are looked at every `checkMs` (a renewal writes them in place, sf up's or the
 * operator's, e.g. certbot's deploy hook); when either changed, the server reloads them. A pair
 * that does not load (caught half-written, or a key that is not the certificate's) is logged and
 * tried again at the next check while the certificate in force keeps serving.
 */
import { stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { HttpsFiles } from './reloadable-app';

/** @default 30 s between looks at the certificate and key files */
export const DEFAULT_HTTPS_RELOAD_CHECK_MS = 30_000;

async function signature(files: HttpsFiles): Promise<string> {
  const [c, k] = await Promise.all([stat(files.certFile), stat(files.keyFile)]);
  return `${c.mtimeMs}:${c.size}:${c.ino}/${k.mtimeMs}:${k.size}:${k.ino}`;
}

export interface HttpsFilesWatch {
  /** Looks now (tests and `SIGHUP`); resolves once any reload it started has finished. */
  check(): Promise<void>;
  stop(): void;
}

export async function watchHttpsFiles(
  files: HttpsFiles,
  reload: (files: HttpsFiles) => Promise<void>,
  log: Logger,
  checkMs: number = DEFAULT_HTTPS_RELOAD_CHECK_MS,
): Promise<HttpsFilesWatch> {
  let served = await signature(files);
  let running: Promise<void> | null = null;
  const check = (): Promise<void> => {
    running ??= (async () => {
      try {
        const now = await signature(files);
        if (now === served) return;
        await reload(files);
        served = now;
        log.info({ certFile: files.certFile }, 'HTTPS certificate reloaded for new connections');
      } catch (err) {
        log.warn(
          { certFile: files.certFile, err: (err as Error).message },
          'HTTPS certificate not reloaded; the current one stays',
        );
      } finally {
        running = null;
      }
    })();
    return running;
  };
  const timer = setInterval(() => void check(), checkMs);
  timer.unref();
  return { check, stop: () => clearInterval(timer) };
}
