// The record pool (cuda/include/kvtc/record_memory.h): the CUDA backend writes every record into a
// block from it, and a freed record's block serves the next record of a similar size, already
// mapped. Exercised here through the addon's test hook, since no CPU path allocates from it.
import t from 'tap';
import { loadNative } from '../../src/codec/native.js';

const native = loadNative();
const MiB = 2 ** 20;

t.test('freed blocks serve the next records; fresh ones are taken once', async (t) => {
  const sizes = [3 * MiB, 1, 5 * MiB + 7];
  const first = native.stages.recordPoolRun(sizes, 1);
  t.equal(first.hits + first.misses, sizes.length, 'one allocation per size');
  const again = native.stages.recordPoolRun(sizes, 3);
  t.equal(again.misses, 0, 'the same sizes again: every block comes from the pool');
  t.equal(again.hits, 3 * sizes.length);
  // 2 MiB blocks: 4 + 2 + 6 MiB idle once everything is freed.
  t.ok(again.idleBytes >= 12 * MiB, `idle ${again.idleBytes} bytes >= 12 MiB`);
});

t.test('a block serves records from half its size up to its size, no others', async (t) => {
  native.stages.recordPoolRun([64 * MiB], 1); // a 64 MiB block is now idle (and 2, 4, 6 MiB ones)
  const tooSmall = native.stages.recordPoolRun([20 * MiB], 1);
  t.equal(tooSmall.misses, 1, 'a 20 MiB record does not take the 64 MiB block (more than twice its size)');
  const fits = native.stages.recordPoolRun([40 * MiB], 1);
  t.equal(fits.hits, 1, 'a 40 MiB record takes the 64 MiB block');
  const tooBig = native.stages.recordPoolRun([200 * MiB], 1);
  t.equal(tooBig.misses, 1, 'no idle block holds 200 MiB');
});
