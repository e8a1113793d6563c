import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { TransferServer, fetchTree, TRANSFER_STATE_FILE } from '../../../cell/volume-transfer';
import { ErrorCode } from '../../../common';

async function tree(root: string, rel = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (r === TRANSFER_STATE_FILE) continue;
    if (e.isDirectory()) Object.assign(out, await tree(root, r));
    else out[r] = (await readFile(path.join(root, r))).toString('hex');
  }
  return out;
}

describe('volume-transfer', () => {
  let base: string;
  let src: string;
  let dest: string;
  let server: TransferServer;
  let port: number;
  const token = 'a'.repeat(32);

  beforeEach(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'sf-transfer-'));
    src = path.join(base, 'src');
    dest = path.join(base, 'dest');
    await mkdir(path.join(src, 'sub', 'deep'), { recursive: true });
    await writeFile(path.join(src, 'aof'), Buffer.alloc(300_000, 1));
    await writeFile(path.join(src, 'sub', 'rel'), 'relation');
    await writeFile(path.join(src, 'sub', 'deep', 'gone'), 'to be removed');
    server = new TransferServer('127.0.0.1');
    port = await server.listen(0);
    server.allow(token, src, 60_000);
  });
  afterEach(async () => {
    await server.close();
    await rm(base, { recursive: true, force: true });
  });

  describe('fetchTree', () => {
    it('copies a tree exactly, then sends only what changed, appending to grown files', async () => {
      const first = await fetchTree({ host: '127.0.0.1', port, token, dest });
      expect(first.files).to.equal(3);
      expect(await tree(dest)).to.deep.equal(await tree(src));

      await appendFile(path.join(src, 'aof'), Buffer.alloc(1000, 2));
      await writeFile(path.join(src, 'sub', 'rel'), 'RELATION');
      await rm(path.join(src, 'sub', 'deep', 'gone'));
      await writeFile(path.join(src, 'new'), 'new file');
      const second = await fetchTree({ host: '127.0.0.1', port, token, dest });
      expect(await tree(dest)).to.deep.equal(await tree(src));
      // 1000 appended bytes, 8 of the rewritten file, 8 of the new one: not the 300 kB again.
      expect(second.bytes).to.equal(1016);

      const third = await fetchTree({ host: '127.0.0.1', port, token, dest });
      expect(third.bytes).to.equal(0);
    });

    it('resends a file whose copy was damaged, whatever the record says', async () => {
      await fetchTree({ host: '127.0.0.1', port, token, dest });
      await writeFile(path.join(dest, 'aof'), 'short');
      const again = await fetchTree({ host: '127.0.0.1', port, token, dest });
      expect(again.bytes).to.equal(300_000);
      expect(await tree(dest)).to.deep.equal(await tree(src));
    });

    it('is refused with a wrong token, and fails when nobody listens', async () => {
      const refused = await fetchTree({ host: '127.0.0.1', port, token: 'b'.repeat(32), dest }).catch(
        (e: unknown) => e,
      );
      expect(refused).to.have.property('code', ErrorCode.TransferFailed);
      await server.close();
      const down = await fetchTree({ host: '127.0.0.1', port, token, dest }).catch((e: unknown) => e);
      expect(down).to.have.property('code', ErrorCode.TransferFailed);
    });
  });
});
