/**
 * Runs a helper binary (initdb, pg_basebackup, psql, ...) to completion and fails with a typed
 * error that carries the tail of its stderr, because that is the only useful diagnosis.
 */
import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, SfError } from '../common';
import { cleanEnv } from './instance-env';

export interface RunAs {
  uid: number;
  gid: number;
  user: string;
}

export interface RunCommandOptions {
  /** @default 60000 */
  timeoutMs?: number;
  runAs?: RunAs;
  env?: Record<string, string>;
  cwd?: string;
  /** Written to the command's stdin: how secrets reach it without appearing in argv. */
  input?: string;
}

export function runCommand(file: string, args: string[], options: RunCommandOptions = {}): Promise<string> {
  const { timeoutMs = 60_000, runAs, env, cwd, input } = options;
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      {
        timeout: timeoutMs,
        cwd: cwd ?? '/',
        maxBuffer: 16 * 1024 * 1024,
        // Helpers get a clean environment like engines do: the cell's holds the platform's secrets.
        env: cleanEnv(env, runAs, runAs ? '/tmp' : (process.env.HOME ?? '/')),
        ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
      },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const timedOut = (err as { killed?: boolean }).killed === true;
        const tail = timedOut
          ? `timed out after ${timeoutMs} ms`
          : String(stderr || err.message)
              .trim()
              .split('\n')
              .slice(-5)
              .join(' | ');
        reject(
          new SfError(
            ErrorCode.EngineCommandFailed,
            `${path.basename(file)} ${args.slice(0, 3).join(' ')} failed: ${tail}`,
          ),
        );
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Finds an executable on PATH or in the given extra directories (only in `onlyDirs` when given); undefined when absent. */
export async function findBinary(
  name: string,
  extraDirs: string[] = [],
  onlyDirs?: string[],
): Promise<string | undefined> {
  const dirs = onlyDirs ?? [...(process.env.PATH ?? '').split(':').filter(Boolean), ...extraDirs];
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here; keep looking.
    }
  }
  return undefined;
}

/** Looks a system user up in /etc/passwd (no native getpwnam in Node). */
export function lookupUser(user: string): RunAs | undefined {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === user && f.length >= 4) return { user, uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // No passwd file: treat as unknown user.
  }
  return undefined;
}
