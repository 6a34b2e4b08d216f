// The projection's GEMMs go through cuBLASLt with a plan per shape, cached per host thread and
// started over when full (cuda/src/cuda_gemm.cuh). A token count is part of the shape, so a
// sidecar meets many: after more shapes than the cache holds, a shape seen before gets the same
// plan again and the same record, bit for bit, in both projections. node:test, like the other GPU
// tests. Skipped in the sanitizer runs (KVTC_GPU_TEST_SMALL=1): its 600 encodes and restores under
// memcheck and racecheck took the whole of a 440-second device call (run h, call 13).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decode, encode, type Projection } from '../../src/codec/codec.js';
import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';

const model = modelInfo(2, 2, 64);
const P = model.layers * model.kv_heads * model.head_dim;
const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

test(
  'projection GEMM plans: a shape seen again after the cache filled gives the same record',
  { skip: gpuSkip || (process.env['KVTC_GPU_TEST_SMALL'] ? 'sanitizer run (KVTC_GPU_TEST_SMALL)' : false) },
  async () => {
    const cal = await syntheticCalibration(model, { samples: 600, ratios: [8], seed: 7 });
    const chunkOf = (tokens: number) => {
      const kv = syntheticKv(tokens, P, tokens);
      return {
        keys: bytes(applyRope(kv.keys, tokens, 0, model)),
        values: bytes(kv.values),
        dtype: 'float32' as const,
        tokens,
        tokenStart: 0,
      };
    };
    const first = chunkOf(333);
    for (const projection of ['bf16', 'fp8'] as Projection[]) {
      const options = { windowTokens: 3, backend: 'cuda' as const, projection };
      const before = await encode(cal, first, options);
      // In bf16, 4 GEMM shapes per token count (keys and values, both ways): 150 counts pass the
      // 256 plans the cache holds (fp8 pads the count to 16: fewer). Each record must still restore.
      for (let tokens = 20; tokens < 20 + 150; tokens++) {
        const chunk = chunkOf(tokens);
        const record = await encode(cal, chunk, options);
        const back = await decode(cal, record, { tokens, dtype: 'float32', backend: 'cuda', projection });
        assert.equal(back.keys.byteLength, chunk.keys.byteLength, `${tokens} tokens restore`);
      }
      const after = await encode(cal, first, options);
      assert.ok(before.equals(after), `${projection}: the record of 333 tokens changed after the cache started over`);
      const a = await decode(cal, before, { tokens: 333, dtype: 'float32', backend: 'cuda', projection });
      const b = await decode(cal, after, { tokens: 333, dtype: 'float32', backend: 'cuda', projection });
      assert.ok(Buffer.from(a.keys).equals(Buffer.from(b.keys)) && Buffer.from(a.values).equals(Buffer.from(b.values)));
    }
  },
);
