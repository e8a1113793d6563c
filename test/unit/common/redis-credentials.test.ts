import { execFileSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { ErrorCode, type SfError } from '../../../common/errors';
import {
  parseRedisCredentials,
  readRedisCredentialsFile,
  redactRedisUrl,
  urlHasCredentials,
  writeRedisCredentialsFile,
} from '../../../common/redis-credentials';

async function rejection(p: Promise<unknown>): Promise<SfError> {
  try {
    await p;
  } catch (err) {
    return err as SfError;
  }
  throw new Error('expected a rejection');
}

describe('redis-credentials', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'sf-creds-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe('writeRedisCredentialsFile', () => {
    it('writes mode 0600 JSON that readRedisCredentialsFile reads back', async () => {
      const file = path.join(dir, 'ok.json');
      await writeRedisCredentialsFile(file, { username: 'router', password: 'pw' });
      expect((await stat(file)).mode & 0o777).to.equal(0o600);
      expect(await readRedisCredentialsFile(file)).to.deep.equal({ username: 'router', password: 'pw' });
    });
  });

  describe('readRedisCredentialsFile', () => {
    for (const mode of [0o640, 0o604, 0o660, 0o620]) {
      it(`refuses a file with mode ${mode.toString(8)}, saying why and how to fix it`, async () => {
        const file = path.join(dir, `open-${mode.toString(8)}.json`);
        await writeFile(file, JSON.stringify({ username: 'u', password: 'secret-value' }));
        await chmod(file, mode);
        const err = await rejection(readRedisCredentialsFile(file));
        expect(err.code).to.equal(ErrorCode.InvalidOption);
        expect(err.message).to.match(/group or others.*chmod 600/);
        expect(err.message).to.not.include('secret-value');
      });
    }

    it('refuses a directory and a FIFO without hanging', async () => {
      const sub = path.join(dir, 'a-dir');
      await mkdir(sub, { mode: 0o700 });
      expect((await rejection(readRedisCredentialsFile(sub))).message).to.match(/not a regular file/);
      const fifo = path.join(dir, 'a-fifo');
      execFileSync('mkfifo', ['-m', '600', fifo]);
      expect((await rejection(readRedisCredentialsFile(fifo))).message).to.match(/not a regular file/);
    });

    it('names a missing file', async () => {
      expect((await rejection(readRedisCredentialsFile(path.join(dir, 'nope.json')))).message).to.match(
        /nope\.json: does not exist/,
      );
    });
  });

  describe('parseRedisCredentials', () => {
    it('never quotes the content of a file that is not JSON', () => {
      expect(() => parseRedisCredentials('hunter2', 'f'))
        .to.throw(/is not JSON/)
        .with.property('message')
        .that.does.not.include('hunter2');
    });

    it('requires a password and refuses unknown fields and line breaks', () => {
      expect(() => parseRedisCredentials('{"username":"u"}', 'f')).to.throw(/'password'/);
      expect(() => parseRedisCredentials('{"password":"p","pass":"x"}', 'f')).to.throw(/unknown field 'pass'/);
      expect(() => parseRedisCredentials('{"password":"a\\nb"}', 'f')).to.throw(/line breaks/);
      expect(parseRedisCredentials('{"password":"p"}', 'f')).to.deep.equal({ password: 'p' });
    });
  });

  describe('redactRedisUrl', () => {
    it('hides user and password of every URL form', () => {
      expect(redactRedisUrl('redis://router:s3cret@127.0.0.1:6379/0')).to.equal('redis://***@127.0.0.1:6379/0');
      expect(redactRedisUrl('rediss://:p@ss@h:1')).to.equal('rediss://***@h:1');
      expect(redactRedisUrl('redis-sentinel://u:p@h1:26379,h2/m')).to.equal('redis-sentinel://***@h1:26379,h2/m');
      expect(redactRedisUrl('redis://127.0.0.1:6379')).to.equal('redis://127.0.0.1:6379');
      expect(urlHasCredentials('redis://127.0.0.1:6379')).to.equal(false);
      expect(urlHasCredentials('redis://u:p@127.0.0.1:6379')).to.equal(true);
    });
  });
});
