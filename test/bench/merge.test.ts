// Merging bench runs of several processes: medians per row, the samples beside them, and a clear
// refusal of runs that are not comparable; the CLI on files.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { median, mergeRuns, mergedTable, type BenchRun } from '../../bench/merge.js';
import { tempDir } from '../helpers/tmp.js';

function row(shape: string, batch: number, encode: number, decode: number, extra: Record<string, unknown> = {}) {
  return {
    shape,
    tokens: 8192,
    batch,
    paged: false,
    projection: 'bf16',
    rank_keys: 2048,
    rank_values: 2048,
    target_ratio: 16,
    chunk_bytes: 16384,
    raw_bytes: 1000,
    record_bytes: 60,
    ratio: 1000 / 60,
    encode_gbps: encode,
    decode_gbps: decode,
    gemm_ratio_encode: 100 / encode,
    gemm_ratio_decode: 100 / decode,
    ...extra,
  };
}

function run(rows: ReturnType<typeof row>[], settings: Record<string, string> = {}): BenchRun {
  return { backend: 'cuda', gpu: 'NVIDIA H200', date: '2026-11-30', settings, results: rows };
}

t.test('median', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.equal(median([7]), 7);
});

t.test('rows are matched by what they measure and merged by their median', async (t) => {
  const merged = mergeRuns([
    run([row('8b', 1, 200, 180), row('8b', 8, 210, 190)]),
    run([row('8b', 1, 110, 170), row('8b', 8, 215, 200)]),
    run([row('8b', 8, 100, 100), row('8b', 1, 205, 185)]),
  ]);
  t.equal(merged.processes, 3);
  t.equal(merged.gpu, 'NVIDIA H200', "the first run's other fields are kept");
  t.same(
    merged.results.map((r) => [r.batch, r.encode_gbps, r.decode_gbps, r.processes]),
    [
      [1, 200, 180, 3],
      [8, 210, 190, 3],
    ],
    "medians per row, in the first run's order, whatever order the other runs list them in",
  );
  t.same(merged.results[0]!.encode_gbps_samples, [200, 110, 205], 'the per-process samples, in process order');
  t.equal(
    merged.results[0]!.gemm_ratio_encode,
    median([100 / 200, 100 / 110, 100 / 205]),
    'ratios by their median too',
  );
  t.equal(merged.results[0]!.record_bytes, 60);
  t.match(
    mergedTable(merged.results),
    /\| 8b \| 8192 \| 1 \| no \| bf16 \| 2048\/2048 \| 16\.67 \| 200\.0 \(110\.0-205\.0\) \|/,
  );
});

t.test('a row only some runs have is merged over those', async (t) => {
  const merged = mergeRuns([run([row('8b', 1, 200, 180)]), run([row('8b', 1, 100, 100), row('1b', 1, 140, 130)])]);
  t.same(
    merged.results.map((r) => [r.shape, r.processes, r.encode_gbps]),
    [
      ['8b', 2, 150],
      ['1b', 1, 140],
    ],
  );
});

t.test('runs that are not comparable are refused with a stable code', async (t) => {
  const refused = (runs: BenchRun[], pattern: RegExp) =>
    t.throws(() => mergeRuns(runs), { name: 'KvtcError', code: 'ERR_KVTC_INVALID_ARGUMENT', message: pattern });
  refused([], /nothing to merge/);
  refused([run([row('8b', 1, 1, 1)], { KVTC_DECODE_INFLATE: 'record' }), run([row('8b', 1, 1, 1)])], /settings/);
  refused([run([row('8b', 1, 1, 1)]), { ...run([row('8b', 1, 1, 1)]), backend: 'cpu' }], /cpu bench/);
  refused([run([row('8b', 1, 1, 1)]), run([row('8b', 1, 1, 1, { record_bytes: 61 })])], /record_bytes differs/);
  refused([run([row('8b', 1, 1, 1)]), { backend: 'cuda' } as unknown as BenchRun], /not a bench codec JSON/);
});

t.test('the CLI merges files and refuses what is not a bench JSON', async (t) => {
  const dir = tempDir(t, 'kvtc-merge-');
  const main = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
  const a = join(dir, 'a.json'),
    b = join(dir, 'b.json'),
    bad = join(dir, 'bad.json');
  writeFileSync(a, JSON.stringify(run([row('1b', 8, 190, 150)])));
  writeFileSync(b, JSON.stringify(run([row('1b', 8, 130, 140)])));
  writeFileSync(bad, '{"results": ');
  const ok = spawnSync(process.execPath, [main, 'bench', 'merge', a, b, '--json'], { encoding: 'utf8' });
  t.equal(ok.status, 0, ok.stderr);
  const merged = JSON.parse(ok.stdout);
  t.equal(merged.processes, 2);
  t.equal(merged.results[0].encode_gbps, 160);
  t.same(merged.results[0].decode_gbps_samples, [150, 140]);
  const table = spawnSync(process.execPath, [main, 'bench', 'merge', a, b], { encoding: 'utf8' });
  t.match(table.stdout, /\| 1b \| 8192 \| 8 \|.*\| 160\.0 \(130\.0-190\.0\) \| 145\.0 \(140\.0-150\.0\) \| 2 \|/);
  const refused = spawnSync(process.execPath, [main, 'bench', 'merge', a, bad], { encoding: 'utf8' });
  t.equal(refused.status, 2);
  t.match(refused.stderr, /bad\.json: not a bench JSON .*\[ERR_KVTC_INVALID_ARGUMENT\]/);
  const help = spawnSync(process.execPath, [main, 'bench', 'merge', '--help'], { encoding: 'utf8' });
  t.match(help.stdout, /median over the processes/);
});
