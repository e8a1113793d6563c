/**
 * Routes from a static JSON file (HAProxy-style standalone use). The file is re-read on
 * `reload()` (SIGHUP) and when it changes on disk; an invalid file leaves the old table in force.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { ErrorCode, SfError, isSfError, withDefaults } from '../common';
import { parseRouteTableJson, type RouteTable } from '../protocol';
import type { RouteSource, RouteSourceListener } from './route-source';
import { readRegularFile } from './read-regular-file';

export interface FileRouteSourceOptions {
  /**
   * Watch the file and reload on change; editors replace files by rename, so the directory is
   * watched, not the inode.
   * @default true
   */
  watch: boolean;
  /**
   * Quiet time after the last change event before reading, so a half-written file is not read.
   * @default 100
   */
  debounceMs: number;
}

export const DEFAULT_FILE_ROUTE_SOURCE_OPTIONS: FileRouteSourceOptions = { watch: true, debounceMs: 100 };

export class FileRouteSource implements RouteSource {
  readonly description: string;
  readonly strictStart = true;
  private readonly path: string;
  private readonly options: FileRouteSourceOptions;
  private listener: RouteSourceListener | undefined;
  private watcher: FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private lastText: string | undefined;
  private lastVersion = -1;
  private reading: Promise<void> = Promise.resolve();

  constructor(path: string, options: Partial<FileRouteSourceOptions> = {}) {
    this.path = resolve(path);
    this.options = withDefaults(DEFAULT_FILE_ROUTE_SOURCE_OPTIONS, options);
    this.description = `file:${this.path}`;
  }

  async start(listener: RouteSourceListener): Promise<void> {
    this.listener = listener;
    const first = await this.readTable();
    this.deliver(first.table, first.text);
    if (this.options.watch) {
      const name = basename(this.path);
      this.watcher = watch(dirname(this.path), { persistent: false }, (_event, file) => {
        if (file !== null && file !== name) return;
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => void this.reload(), this.options.debounceMs);
      });
    }
  }

  /** Reads the file again; serialised so two quick reloads cannot deliver out of order. */
  reload(): Promise<void> {
    this.reading = this.reading.then(() => this.readAndDeliver());
    return this.reading;
  }

  async stop(): Promise<void> {
    clearTimeout(this.debounce);
    this.watcher?.close();
    this.watcher = undefined;
    this.listener = undefined;
  }

  private async readAndDeliver(): Promise<void> {
    if (!this.listener) return;
    try {
      const { table, text } = await this.readTable();
      if (text === this.lastText) return;
      this.deliver(table, text);
    } catch (err) {
      this.listener?.onError(isSfError(err) ? err : new SfError(ErrorCode.RouteSource, String(err)));
    }
  }

  private async readTable(): Promise<{ table: RouteTable; text: string }> {
    const text = await readRegularFile(this.path, 'route file', 'file');
    const table = parseRouteTableJson(text);
    this.listener?.check?.(table);
    return { table, text };
  }

  /**
   * Route files are edited by hand and often keep their version; versions handed to the router
   * must still grow, so an unchanged or lower version becomes the next one.
   */
  private deliver(table: RouteTable, text: string): void {
    const version = table.version > this.lastVersion ? table.version : this.lastVersion + 1;
    this.lastVersion = version;
    this.lastText = text;
    this.listener?.onTable({ ...table, version });
  }
}
