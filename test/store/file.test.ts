// file:// store: atomic write-and-rename under hashed paths, survives a restart, refuses records
// whose check (CRC) fails, LRU by bytes.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import t from 'tap';

import { FileStore } from '../../src/store/file.js';
import { tempDir } from '../helpers/tmp.js';

const valid = (b: Buffer) => b[0] === 0x6b; // 'k': stands in for the record CRC check
const rec = (n: number) => Buffer.concat([Buffer.from('k'), Buffer.alloc(n - 1, 7)]);

function files(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true }))
      if (e.isDirectory()) walk(join(d, e.name));
      else out.push(join(d, e.name));
  };
  walk(dir);
  return out;
}

t.test('records survive a restart and are found again', async (t) => {
  const dir = tempDir(t, 'kvtc-file-');
  const a = await FileStore.open('file://x', dir, 1 << 20, valid);
  await a.put('aa'.repeat(16), rec(1000));
  await a.put('bb'.repeat(16), rec(500));
  t.same(files(join(dir, 'tmp')), [], 'no temporary files left after the renames');
  const b = await FileStore.open('file://x', dir, 1 << 20, valid);
  t.equal(b.stats().entries, 2);
  t.equal(b.stats().bytes, 1500);
  const p = await b.acquire('aa'.repeat(16));
  t.equal(p!.bytes.length, 1000);
  p!.release();
});

t.test('a record that fails its check is deleted and reported absent', async (t) => {
  const dir = tempDir(t, 'kvtc-file-');
  const s = await FileStore.open('file://x', dir, 1 << 20, valid);
  await s.put('cc'.repeat(16), rec(100));
  const path = files(dir).find((f) => f.endsWith('.kvtc'))!;
  const bytes = readFileSync(path);
  bytes[0] = 0; // corrupt
  writeFileSync(path, bytes);
  t.equal(await s.acquire('cc'.repeat(16)), undefined);
  t.notOk(await s.has('cc'.repeat(16)));
  t.equal(files(dir).filter((f) => f.endsWith('.kvtc')).length, 0, 'file removed');
});

t.test('LRU by bytes, pinned records kept, full when nothing can go', async (t) => {
  const dir = tempDir(t, 'kvtc-file-');
  const s = await FileStore.open('file://x', dir, 250, valid);
  await s.put('a1'.repeat(16), rec(100));
  await s.put('a2'.repeat(16), rec(100));
  const pin = await s.acquire('a1'.repeat(16));
  await s.put('a3'.repeat(16), rec(100)); // a2 goes: a1 is pinned
  t.ok(await s.has('a1'.repeat(16)));
  t.notOk(await s.has('a2'.repeat(16)));
  await t.rejects(s.put('a4'.repeat(16), rec(300)), { code: 'ERR_KVTC_STORE_FULL' });
  pin!.release();
  t.ok(s.stats().bytes <= 250);
});

t.test('an unusable directory is STORE_IO', async (t) => {
  const dir = tempDir(t, 'kvtc-file-');
  writeFileSync(join(dir, 'plain'), 'not a directory');
  await t.rejects(FileStore.open('file://x', join(dir, 'plain'), 100, valid), { code: 'ERR_KVTC_STORE_IO' });
});
