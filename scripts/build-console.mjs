// Bundles the web console (console/app.tsx: Preact and uPlot) into dist/console with esbuild,
// next to its page and styles; control serves that folder at /ui/.
import { build } from 'esbuild';
import { mkdir, readFile, writeFile, copyFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist', 'console');
await mkdir(out, { recursive: true });
await build({
  entryPoints: [path.join(root, 'console', 'app.tsx')],
  bundle: true,
  format: 'iife',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outfile: path.join(out, 'app.js'),
  logLevel: 'warning',
});
const css = await Promise.all([
  readFile(path.join(root, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'), 'utf8'),
  readFile(path.join(root, 'console', 'console.css'), 'utf8'),
]);
await writeFile(path.join(out, 'app.css'), css.join('\n'));
await copyFile(path.join(root, 'console', 'index.html'), path.join(out, 'index.html'));
