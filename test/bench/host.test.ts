// `bench host`: the CUDA backend's host passes beside memcpy, on this machine's CPU (it needs no
// GPU). Figures are not asserted (no timing in tests); the shape of what it reports is.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';

import { benchHost, hostTable } from '../../bench/host.js';

t.test('every size gives every figure, and the table shows them', async (t) => {
  const sizes = [4096, 2 ** 19 + 17];
  const r = benchHost({ sizes, reps: 2 });
  t.ok(r.cores >= 1, 'cores counted');
  t.same(
    r.results.map((x) => x.bytes),
    sizes,
  );
  for (const x of r.results) {
    for (const k of ['memcpy_gbps', 'crc32c_gbps', 'copy_crc32c_gbps', 'copy_crc32c_aliased_gbps'] as const)
      t.ok(Number.isFinite(x[k]) && x[k] > 0, `${x.bytes} B: ${k} ${x[k]}`);
    t.equal(x.copy_crc32c_vs_memcpy, x.memcpy_gbps / x.copy_crc32c_gbps);
  }
  const table = hostTable(r);
  t.match(table, /\| 524305 \|/, 'a row per size');
  t.equal(table.split('\n').length, 3 + sizes.length);
});

t.test('the CLI prints JSON and refuses sizes that are not positive integers', async (t) => {
  const main = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
  const ok = spawnSync(process.execPath, [main, 'bench', 'host', '--sizes', '4096', '--reps', '1', '--json'], {
    encoding: 'utf8',
  });
  t.equal(ok.status, 0, ok.stderr);
  t.equal((JSON.parse(ok.stdout) as { results: unknown[] }).results.length, 1);
  const bad = spawnSync(process.execPath, [main, 'bench', 'host', '--sizes', '4096,0'], { encoding: 'utf8' });
  t.not(bad.status, 0);
  t.match(bad.stderr, /--sizes must be positive integers/);
});
