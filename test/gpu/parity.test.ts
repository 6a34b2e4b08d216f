// GPU parity tests (node:test, so they run on the GPU machine with plain node from dist/; under
// tap in CI they skip with a message). The CUDA backend against the CPU backend: quantization
// byte-exact on identical coefficients, and the cross-decode matrix (cpu->cpu, cpu->cuda,
// cuda->cpu, cuda->cuda) exact on raw sections and within the plan's error end to end.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decode, encode, type Backend } from '../../src/codec/codec.js';
import { loadNative, type NativePlan } from '../../src/codec/native.js';
import { applyRope, gaussian, mulberry32, syntheticKv } from '../../src/calibrate/synthetic.js';
import { fitCalibration } from '../../src/calibrate/fit.js';
import { modelInfo, smallRecordFixture } from '../helpers/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';
import { relError } from '../helpers/reference.js';

const native = loadNative();
const skip = gpuSkip;

const MIXED: [number, number, number][] = [
  [0, 1, 3],
  [1, 1, 1],
  [2, 1, 2],
  [3, 16, 3],
  [19, 64, 2],
  [83, 256, 1],
  [339, 16, 0],
  [355, 1024, 1],
];

test('quantize: CUDA payload is byte-identical to the CPU payload', { skip }, () => {
  const rank = 355 + 1024;
  const plan: NativePlan = { groups: Uint32Array.from(MIXED.flat()), rank };
  for (const tokens of [1, 7, 19, 989]) {
    const normal = gaussian(mulberry32(tokens));
    const d = Float32Array.from({ length: tokens * rank }, (_, i) => normal() * 30 * Math.pow(1 + (i % rank), -0.7));
    const cpu = native.stages.quantize(d, { tokens, plan });
    const gpu = native.stages.quantizeCuda!(d, { tokens, plan });
    assert.equal(Buffer.compare(cpu, gpu), 0, `${tokens} tokens: payloads differ`);
    const back = native.stages.dequantizeCuda!(cpu, { tokens, plan });
    const ref = native.stages.dequantize(cpu, { tokens, plan });
    // The GPU writes bf16 (the GEMM's input): equal to the CPU's float32 up to bf16 rounding.
    let worst = 0;
    for (let i = 0; i < ref.length; i++)
      worst = Math.max(worst, Math.abs(back[i]! - ref[i]!) / (Math.abs(ref[i]!) + 1e-6));
    assert.ok(worst <= 2 ** -8, `${tokens} tokens: dequantized differs by ${worst}`);
  }
});

// KVTC_GPU_TEST_SMALL=1 (the sanitizer runs) keeps to the small shape.
const SHAPES = [
  ['stories260k', 5, 4, 8],
  ['smollm2', 30, 3, 64],
] as const;
const TEST_SHAPES = process.env['KVTC_GPU_TEST_SMALL'] ? SHAPES.slice(0, 1) : SHAPES;

// A model of the shape and a calibration fitted on its synthetic KV (seed `seed`) with one plan.
// (The fit's settings are the ones the GPU runs set these tests' bounds on, not
// syntheticCalibration's.)
async function shapeCalibration([name, layers, heads, dim]: (typeof SHAPES)[number], ratio: number, seed: number) {
  const p = layers * heads * dim;
  const model = modelInfo(layers, heads, dim);
  const n = Math.min(2 * p, 4096);
  const s = syntheticKv(n, p, seed);
  const cal = await fitCalibration({
    model,
    keys: s.keys,
    values: s.values,
    n,
    ratios: [ratio],
    rankCap: Math.min(p, 1024),
    powerIters: 2,
    oversample: 8,
    seed: 1,
    dpSamples: 256,
    sinkTokens: 4,
    windowTokens: 128,
    source: 'gpu parity',
  });
  return { name, p, model, cal };
}

for (const shape of TEST_SHAPES) {
  test(`cross-decode matrix, ${shape[0]} shape`, { skip }, async () => {
    const { name, p, model, cal } = await shapeCalibration(shape, 8, 1);
    for (const tokens of [1, 7, 19, 989]) {
      const kv = syntheticKv(tokens, p, tokens + 7);
      const keys = applyRope(kv.keys, tokens, 100, model);
      const chunk = { keys, values: kv.values, dtype: 'float32' as const, tokens, tokenStart: 100 };
      // cpu-indexed: the CPU writing indexed chunks (small chunks and runs, so that even short
      // payloads have entry points for the GPU's lanes); cuda writes indexed chunks always;
      // cuda-odd: chunks of 1002 bytes, so that the GPU packs chunks at every byte alignment, from
      // unaligned raw chunks too.
      // *-stored: level 0, every chunk stored (no entropy coding), the same payloads.
      type Writer = Backend | 'cpu-indexed' | 'cuda-odd' | 'cpu-stored' | 'cuda-stored';
      const records: Record<Writer, Buffer> = {
        cpu: await encode(cal, chunk, { windowTokens: 3, backend: 'cpu' }),
        'cpu-indexed': await encode(cal, chunk, { windowTokens: 3, backend: 'cpu', chunkBytes: 512, entryStride: 16 }),
        cuda: await encode(cal, chunk, { windowTokens: 3, backend: 'cuda' }),
        'cuda-odd': await encode(cal, chunk, { windowTokens: 3, backend: 'cuda', chunkBytes: 1002, entryStride: 16 }),
        'cpu-stored': await encode(cal, chunk, {
          windowTokens: 3,
          backend: 'cpu',
          chunkBytes: 512,
          entryStride: 16,
          deflateLevel: 0,
        }),
        'cuda-stored': await encode(cal, chunk, { windowTokens: 3, backend: 'cuda', deflateLevel: 0 }),
      };
      // The CUDA writer stores every chunk: its coded sections are as large as the CPU's stored
      // ones at the same chunk size and entry stride (the payload's size is the plan's).
      const codedSizes = (r: Buffer) =>
        native
          .inspect(r)
          .sections.filter((s) => s.encoding !== 0)
          .map((s) => s.storedBytes);
      assert.deepEqual(
        codedSizes(records['cuda-stored']),
        codedSizes(
          await encode(cal, chunk, {
            windowTokens: 3,
            backend: 'cpu',
            chunkBytes: 16384,
            entryStride: 512,
            deflateLevel: 0,
          }),
        ),
        `${name} ${tokens}: cuda-stored sections`,
      );
      const plan = cal.plans[0]!;
      for (const dec of ['cpu', 'cuda'] as Backend[]) {
        // Same payload, other entropy coding: the same decoder must give the same bytes.
        const a = await decode(cal, records.cpu, { tokens, dtype: 'float32', backend: dec });
        const b = await decode(cal, records['cpu-indexed'], { tokens, dtype: 'float32', backend: dec });
        assert.deepEqual(Buffer.from(b.keys), Buffer.from(a.keys), `${name} ${tokens} cpu-indexed->${dec}: keys`);
        assert.deepEqual(Buffer.from(b.values), Buffer.from(a.values), `${name} ${tokens} cpu-indexed->${dec}: values`);
        for (const [coded, stored] of [
          ['cpu-indexed', 'cpu-stored'],
          ['cuda', 'cuda-stored'],
        ] as const) {
          const c = await decode(cal, records[coded], { tokens, dtype: 'float32', backend: dec });
          const s = await decode(cal, records[stored], { tokens, dtype: 'float32', backend: dec });
          assert.deepEqual(Buffer.from(s.keys), Buffer.from(c.keys), `${name} ${tokens} ${stored}->${dec}: keys`);
          assert.deepEqual(Buffer.from(s.values), Buffer.from(c.values), `${name} ${tokens} ${stored}->${dec}: values`);
        }
      }
      for (const enc of ['cpu', 'cpu-indexed', 'cuda', 'cuda-odd', 'cpu-stored', 'cuda-stored'] as const) {
        for (const dec of ['cpu', 'cuda'] as Backend[]) {
          const out = await decode(cal, records[enc], { tokens, dtype: 'float32', backend: dec });
          const k = new Float32Array(out.keys.buffer.slice(out.keys.byteOffset, out.keys.byteOffset + out.keys.length));
          const v = new Float32Array(
            out.values.buffer.slice(out.values.byteOffset, out.values.byteOffset + out.values.length),
          );
          const w = out.info.windowTokens;
          assert.deepEqual(
            k.subarray((tokens - w) * p),
            keys.subarray((tokens - w) * p),
            `${enc}->${dec}: window exact`,
          );
          const mid = tokens - w;
          if (mid > 0) {
            const ek = relError(k.subarray(0, mid * p), keys.subarray(0, mid * p)) ** 2;
            const ev = relError(v.subarray(0, mid * p), kv.values.subarray(0, mid * p)) ** 2;
            // bf16 GEMM operands on the GPU add ~1e-5 relative squared error to the plan's.
            assert.ok(
              ek <= 3 * plan.keys.expected_error + 2e-3,
              `${name} ${tokens} ${enc}->${dec}: keys ${ek} vs ${plan.keys.expected_error}`,
            );
            assert.ok(
              ev <= 3 * plan.values.expected_error + 2e-3,
              `${name} ${tokens} ${enc}->${dec}: values ${ev} vs ${plan.values.expected_error}`,
            );
          }
        }
      }
    }
  });
}

// The fp8 projection (cuda_fp8.cuh) against the CPU backend's simulation of the same arithmetic
// (codec.cc RoundVector): e4m3 operands scaled per token and per basis vector, fp32 products. The
// two differ by the CUDA prologue's bf16 rows (rounded again to e4m3) and by summation order, so
// they agree in error, not in bits; raw sections stay exact.
test('fp8 projection: CUDA against the CPU simulation, both ways, odd sizes', { skip }, async () => {
  const { p, model, cal } = await shapeCalibration(TEST_SHAPES[TEST_SHAPES.length - 1]!, 16, 2);
  const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  for (const tokens of [1, 7, 19, 989]) {
    const kv = syntheticKv(tokens, p, tokens + 11);
    const keys = applyRope(kv.keys, tokens, 100, model);
    const chunk = { keys, values: kv.values, dtype: 'float32' as const, tokens, tokenStart: 100 };
    const gpu8 = await encode(cal, chunk, { windowTokens: 3, backend: 'cuda', projection: 'fp8' });
    const cpu8 = await encode(cal, chunk, { windowTokens: 3, backend: 'cpu', projection: 'fp8' });
    const gpu16 = await encode(cal, chunk, { windowTokens: 3, backend: 'cuda' });
    // The restore's keys and values, its rows before the raw window (mid), and their errors.
    const errors = async (record: Buffer, backend: Backend, projection: 'fp32' | 'bf16' | 'fp8') => {
      const out = await decode(cal, record, { tokens, dtype: 'float32', backend, projection });
      const k = f32(out.keys),
        v = f32(out.values);
      const mid = tokens - out.info.windowTokens;
      assert.deepEqual(k.subarray(mid * p), keys.subarray(mid * p), `${backend}: window exact`);
      return {
        k,
        v,
        mid,
        ek: mid > 0 ? relError(k.subarray(0, mid * p), keys.subarray(0, mid * p)) ** 2 : 0,
        ev: mid > 0 ? relError(v.subarray(0, mid * p), kv.values.subarray(0, mid * p)) ** 2 : 0,
      };
    };
    // Encode: the GPU's fp8 record costs what the CPU's simulated one does (both decoded in fp32).
    const g = await errors(gpu8, 'cpu', 'fp32');
    const c = await errors(cpu8, 'cpu', 'fp32');
    const b = await errors(gpu16, 'cpu', 'fp32');
    assert.ok(g.ek <= 1.25 * c.ek + 1e-4, `${tokens}: fp8 encode keys ${g.ek} vs CPU simulation ${c.ek}`);
    assert.ok(g.ev <= 1.25 * c.ev + 1e-4, `${tokens}: fp8 encode values ${g.ev} vs CPU simulation ${c.ev}`);
    // ... and at most a little more than the bf16 record (docs/quality.md: +2-4 % at 16x).
    assert.ok(g.ek <= 1.5 * b.ek + 1e-3, `${tokens}: fp8 keys ${g.ek} vs bf16 ${b.ek}`);
    assert.ok(g.ev <= 1.5 * b.ev + 1e-3, `${tokens}: fp8 values ${g.ev} vs bf16 ${b.ev}`);
    // Decode: the GPU's fp8 reconstruction of one record is the CPU's simulated one, up to e4m3
    // steps taken differently next to a rounding midpoint.
    const gd = await errors(gpu16, 'cuda', 'fp8');
    const cd = await errors(gpu16, 'cpu', 'fp8');
    assert.ok(gd.ek <= 1.25 * cd.ek + 1e-4, `${tokens}: fp8 decode keys ${gd.ek} vs CPU simulation ${cd.ek}`);
    assert.ok(gd.ev <= 1.25 * cd.ev + 1e-4, `${tokens}: fp8 decode values ${gd.ev} vs CPU simulation ${cd.ev}`);
    if (gd.mid > 0) {
      const dk = relError(gd.k.subarray(0, gd.mid * p), cd.k.subarray(0, gd.mid * p));
      const dv = relError(gd.v.subarray(0, gd.mid * p), cd.v.subarray(0, gd.mid * p));
      assert.ok(dk <= 0.05 && dv <= 0.05, `${tokens}: fp8 decode GPU vs CPU differ by ${dk} (keys) ${dv} (values)`);
    }
  }
});

test("CUDA decoder refuses bad records with the CPU decoder's codes", { skip }, async () => {
  const { cal, ...s } = await smallRecordFixture();
  const rec = await encode(
    cal,
    { keys: s.keys, values: s.values, dtype: 'float32', tokens: 256 },
    { backend: 'cuda', windowTokens: 8 },
  );
  const flipped = Buffer.from(rec);
  flipped[flipped.length - 20]! ^= 1;
  await assert.rejects(decode(cal, flipped, { tokens: 256, dtype: 'float32', backend: 'cuda' }), {
    code: 'ERR_KVTC_RECORD_CORRUPT',
  });
  await assert.rejects(decode(cal, rec.subarray(0, 50), { tokens: 256, dtype: 'float32', backend: 'cuda' }), {
    code: 'ERR_KVTC_RECORD_TRUNCATED',
  });
  await assert.rejects(decode(cal, rec, { tokens: 255, dtype: 'float32', backend: 'cuda' }), {
    code: 'ERR_KVTC_RECORD_SIZE_MISMATCH',
  });
  // One flipped byte at the start, the middle and the end of every section (a coded section's
  // start is its chunk table): the restore checks section CRCs while staging, after earlier
  // sections have gone to the device, so each must still fail with the CPU decoder's code, and
  // the next restore must be unharmed.
  const good = await decode(cal, rec, { tokens: 256, dtype: 'float32', backend: 'cuda' });
  const view = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const count = rec[55]!;
  for (let i = 0; i < count; i++) {
    const entry = 96 + 32 * i;
    const offset = Number(view.getBigUint64(entry + 16, true)),
      stored = Number(view.getBigUint64(entry + 24, true));
    for (const at of [offset, offset + Math.floor(stored / 2), offset + stored - 1]) {
      const bad = Buffer.from(rec);
      bad[at]! ^= 0x10;
      const cpu = await decode(cal, bad, { tokens: 256, dtype: 'float32', backend: 'cpu' }).then(
        () => 'decoded',
        (e: { code?: string }) => e.code,
      );
      await assert.rejects(
        decode(cal, bad, { tokens: 256, dtype: 'float32', backend: 'cuda' }),
        { code: cpu },
        `section ${i} (kind ${rec[entry]}), byte ${at - offset} of ${stored}`,
      );
      const again = await decode(cal, rec, { tokens: 256, dtype: 'float32', backend: 'cuda' });
      assert.ok(again.keys.equals(good.keys) && again.values.equals(good.values), 'a good restore after a bad one');
    }
  }
});
