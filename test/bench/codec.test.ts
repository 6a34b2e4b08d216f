// The CPU codec bench on the tiny stories260K shape: it runs, its calibration is built on the
// synthetic distribution's exact axes, its synthetic KV is cached, and its options reach the
// records it times.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { benchSettings, benchShape, SHAPES } from '../../bench/codec.js';
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

t.test('the CLI refuses --entry-stride for the CUDA backend', async (t) => {
  const main = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
  const r = spawnSync(process.execPath, [main, 'bench', 'codec', '--backend', 'cuda', '--entry-stride', '512'], {
    encoding: 'utf8',
  });
  t.not(r.status, 0);
  t.match(r.stderr, /--entry-stride is cpu only/);
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
