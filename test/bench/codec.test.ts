// The CPU codec bench on the tiny stories260K shape: it runs, its calibration is built on the
// synthetic distribution's exact axes, its synthetic KV is cached, and its options reach the
// records it times.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { benchSettings, benchShape, realInput, realShape, SHAPES } from '../../bench/codec.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { writeSyntheticCapture } from '../helpers/capture.js';
import { tempDir } from '../helpers/tmp.js';

const shape = SHAPES.find((s) => s.name === 'stories260k')!;

t.test('plain and indexed records, the same plan', async (t) => {
  const cacheDir = tempDir(t, 'kvtc-bench-');
  const base = { shapes: [shape], ratio: 16, reps: 1, cacheDir };
  const plain = await benchShape(shape, base);
  t.equal(plain.chunk_bytes, 64 * 1024, "the CPU backend's default chunk");
  t.equal(plain.entry_stride, 0);
  t.ok(plain.ratio_coded > 8, `ratio on coded tokens ${plain.ratio_coded.toFixed(2)} at a 16x plan`);
  t.ok(
    plain.encode_gbps > 0 && plain.decode_gbps > 0 && plain.gemm_ratio_decode > 0,
    'throughputs and GEMM ratios reported',
  );
  const indexed = await benchShape(shape, { ...base, chunkBytes: 16 * 1024, entryStride: 512 });
  t.equal(indexed.chunk_bytes, 16 * 1024);
  t.equal(indexed.entry_stride, 512);
  t.equal(indexed.rank_keys, plain.rank_keys, 'the cached calibration is reused');
  const cached = join(cacheDir, `synthetic-kv-p160-t${shape.tokens}-s42.f32`);
  t.equal(statSync(cached).size, 2 * shape.tokens * 160 * 4, 'the synthetic KV is cached (float32 keys and values)');
  const again = await benchShape(shape, base);
  t.equal(again.record_bytes, plain.record_bytes, 'KV read back from the cache encodes to the same record size');
  t.ok(
    indexed.record_bytes > plain.record_bytes * 0.9 && indexed.record_bytes < plain.record_bytes * 1.1,
    'record sizes within 10%',
  );
});

t.test('captured KV (--kv, --calibration): tiled past its sinks, under its own calibration', async (t) => {
  const dir = tempDir(t, 'kvtc-bench-real-');
  const model = modelInfo(5, 4, 8);
  const cal = await syntheticCalibration(model, { ratios: [8, 16] });
  const calFile = join(dir, 'cal.safetensors');
  writeFileSync(calFile, cal.serialize());
  const kvDir = join(dir, 'kv');
  mkdirSync(kvDir);
  writeSyntheticCapture(join(kvDir, 'seq-00000.safetensors'), model, 300, 1);
  writeSyntheticCapture(join(kvDir, 'seq-00001.safetensors'), model, 200, 2, 50);
  const real = await realInput(kvDir, calFile);
  t.equal(real.tokens, 300 - 4 + 200 - 4, "each capture's first 4 tokens are left out");
  const s = realShape(real, SHAPES);
  t.equal(s.name, 'stories260k', 'the bench shape of the same dimensions');
  const r = await benchShape({ ...s, tokens: 1200 }, { shapes: [s], ratio: 16, reps: 1, cacheDir: dir, real });
  t.equal(r.input, `captured: ${kvDir}`);
  t.same(
    [r.rank_keys, r.rank_values],
    [cal.plans[1]!.keys.rank, cal.plans[1]!.values.rank],
    "the calibration's 16x plan",
  );
  t.equal(r.raw_bytes, 1200 * 160 * 4, 'tiled to the length');
  const other = modelInfo(5, 4, 8);
  other.fingerprint = 'ffffffffffffffffffffffffffffffff';
  writeSyntheticCapture(join(kvDir, 'seq-00002.safetensors'), other, 10, 3);
  await t.rejects(realInput(kvDir, calFile), { code: 'ERR_KVTC_MODEL_MISMATCH' }, "another model's capture");
});

t.test('the CLI refuses --entry-stride for the CUDA backend', async (t) => {
  const main = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
  const r = spawnSync(process.execPath, [main, 'bench', 'codec', '--backend', 'cuda', '--entry-stride', '512'], {
    encoding: 'utf8',
  });
  t.not(r.status, 0);
  t.match(r.stderr, /--entry-stride is cpu only/);
});

t.test('the CLI takes --kv and --calibration together, without --shape', async (t) => {
  const main = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
  for (const [args, pattern] of [
    [['--kv', 'x'], /--kv and --calibration go together/],
    [['--kv', 'x', '--calibration', 'y', '--shape', '8b'], /--kv sets the shape/],
  ] as const) {
    const r = spawnSync(process.execPath, [main, 'bench', 'codec', ...args], { encoding: 'utf8' });
    t.not(r.status, 0);
    t.match(r.stderr, pattern);
  }
});

t.test("the bench JSON's settings: the codec's and OpenMP's environment knobs, nothing else", async (t) => {
  const env = {
    KVTC_ROW_KERNELS: 'vector',
    PATH: '/bin',
    OMP_WAIT_POLICY: 'passive',
    HOME: '/root',
    GOMP_SPINCOUNT: '0',
  };
  t.same(benchSettings(env), { GOMP_SPINCOUNT: '0', KVTC_ROW_KERNELS: 'vector', OMP_WAIT_POLICY: 'passive' });
  t.same(benchSettings({ PATH: '/bin' }), {});
});
