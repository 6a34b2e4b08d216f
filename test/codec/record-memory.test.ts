// The record pool (cuda/include/kvtc/record_memory.h): the CUDA backend writes every record into a
// block from it, and a freed record's block serves the next record of a similar size, already
// mapped. Exercised here through the addon's test hook, since no CPU path allocates from it.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
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

// Run last: it leaves the pool holding a batch larger than the fixed default.
t.test('the pool grows to hold the largest batch an encode wrote, unless KVTC_RECORD_POOL_MB fixes it', async (t) => {
  // Five 128 MiB records: 640 MiB, more than the 512 MiB the pool holds before any batch.
  const batch = Array.from({ length: 5 }, () => 128 * MiB);
  if (process.env.KVTC_RECORD_POOL_MB === undefined) {
    const first = native.stages.recordPoolRun(batch, 1);
    t.ok(first.limitBytes >= (512 + 640) * MiB, `the bound grew by the batch: ${first.limitBytes / MiB} MiB`);
    t.ok(first.idleBytes >= 640 * MiB, 'the whole batch went back to the pool');
    const again = native.stages.recordPoolRun(batch, 2);
    t.equal(again.misses, 0, 'the same batch again: every record comes from the pool');
    // The same with the bound fixed at the default: a child process, the variable read at start.
    const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
      env: { ...process.env, KVTC_RECORD_POOL_MB: '512' },
      encoding: 'utf8',
    });
    t.equal(child.status, 0, `the fixed-bound child passed:\n${child.stdout}\n${child.stderr}`);
  } else {
    const fixed = Number(process.env.KVTC_RECORD_POOL_MB) * MiB;
    const first = native.stages.recordPoolRun(batch, 1);
    t.equal(first.limitBytes, fixed, 'KVTC_RECORD_POOL_MB fixes the bound');
    const again = native.stages.recordPoolRun(batch, 1);
    t.ok(again.misses >= 1, `a batch larger than the fixed bound misses again: ${again.misses} misses`);
  }
});
