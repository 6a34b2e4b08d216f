// mem:// store: LRU by bytes, entries pinned while read, STORE_FULL when nothing can be evicted.
import t from 'tap';

import { MemoryStore } from '../../src/store/memory.js';
import { parseBytes } from '../../src/store/store.js';

const rec = (n: number, fill = 1) => Buffer.alloc(n, fill);

t.test('evicts least recently used first, by bytes', async (t) => {
  const s = new MemoryStore('mem://?max=300', 300);
  await s.put('a', rec(100));
  await s.put('b', rec(100));
  await s.put('c', rec(100));
  (await s.acquire('a'))!.release(); // a is now the most recent
  await s.put('d', rec(100)); // evicts b, the least recent
  t.same([await s.has('a'), await s.has('b'), await s.has('c'), await s.has('d')], [true, false, true, true]);
  t.equal(s.stats().bytes, 300);
});

t.test('pinned entries survive eviction; full when only pinned bytes remain', async (t) => {
  const s = new MemoryStore('mem://?max=200', 200);
  await s.put('a', rec(100));
  await s.put('b', rec(100));
  const pa = await s.acquire('a');
  const pb = await s.acquire('b');
  await t.rejects(s.put('c', rec(100)), { code: 'ERR_KVTC_STORE_FULL' });
  t.equal(pa!.bytes.length, 100, 'a reader keeps its bytes');
  pb!.release();
  pb!.release(); // a second release is harmless
  await s.put('c', rec(100));
  t.ok(await s.has('a'), 'pinned a kept');
  t.notOk(await s.has('b'), 'released b evicted');
  pa!.release();
});

t.test('a record larger than the cap is refused; delete frees bytes', async (t) => {
  const s = new MemoryStore('mem://?max=100', 100);
  await t.rejects(s.put('big', rec(101)), { code: 'ERR_KVTC_STORE_FULL' });
  await s.put('a', rec(60));
  t.equal(await s.delete('a'), true);
  t.equal(await s.delete('a'), false);
  t.equal(s.stats().bytes, 0);
});

t.test('parseBytes', async (t) => {
  t.equal(parseBytes('64MiB', 0), 64 * 2 ** 20);
  t.equal(parseBytes('1.5k', 0), 1536);
  t.equal(parseBytes(null, 7), 7);
  t.throws(() => parseBytes('lots', 0));
});
