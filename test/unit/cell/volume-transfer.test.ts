import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import {
  TransferServer,
  fetchTree,
  loadTransferTls,
  TRANSFER_STATE_FILE,
  type TransferTls,
} from '../../../cell/volume-transfer';
import { ErrorCode, PlatformCa } from '../../../common';

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

  describe('over TLS with the platform CA', () => {
    let ca: PlatformCa;
    /** A cell's TLS files as `sf cell --ca-dir` gives them: its certificate, key and the CA. */
    const cellTls = async (authority: PlatformCa, name: string): Promise<TransferTls> => {
      const issued = await authority.ensure(name, ['127.0.0.1']);
      return loadTransferTls({ certFile: issued.certFile, keyFile: issued.keyFile, caFile: authority.certFile });
    };

    beforeEach(async () => {
      ca = await PlatformCa.open(path.join(base, 'ca'));
      await server.close();
      server = new TransferServer('127.0.0.1', await cellTls(ca, 'cell-src'));
      port = await server.listen(0);
      server.allow(token, src, 60_000);
    });

    it('copies when the receiver presents a certificate from the platform CA', async () => {
      const tls = await cellTls(ca, 'cell-dest');
      const copied = await fetchTree({ host: '127.0.0.1', port, token, dest, tls });
      expect(copied.files).to.equal(3);
      expect(await tree(dest)).to.deep.equal(await tree(src));
    });

    it('refuses a receiver whose certificate another CA signed, and one with none', async () => {
      const other = await PlatformCa.open(path.join(base, 'other-ca'));
      // The receiver trusts the platform CA but presents a certificate from another one.
      const stranger = await cellTls(other, 'cell-dest');
      const wrongCert = await fetchTree({
        host: '127.0.0.1',
        port,
        token,
        dest,
        tls: { ...stranger, ca: (await cellTls(ca, 'unused')).ca },
      }).catch((e: unknown) => e);
      expect(wrongCert).to.have.property('code', ErrorCode.TransferFailed);
      const plain = await fetchTree({ host: '127.0.0.1', port, token, dest }).catch((e: unknown) => e);
      expect(plain).to.have.property('code', ErrorCode.TransferFailed);
      expect(await readdir(dest).catch(() => [] as string[])).to.not.include('aof');
    });

    it('refuses a source whose certificate the platform CA did not sign', async () => {
      const other = await PlatformCa.open(path.join(base, 'other-ca'));
      await server.close();
      server = new TransferServer('127.0.0.1', await cellTls(other, 'cell-src'));
      port = await server.listen(0);
      server.allow(token, src, 60_000);
      const refused = await fetchTree({
        host: '127.0.0.1',
        port,
        token,
        dest,
        tls: await cellTls(ca, 'cell-dest'),
      }).catch((e: unknown) => e);
      expect(refused).to.have.property('code', ErrorCode.TransferFailed);
    });
  });
});
