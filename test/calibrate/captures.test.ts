// Bad calibration inputs: each gives a clear error naming the file.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { poolCaptures } from '../../src/calibrate/captures.js';
import { float32Tensor, serializeSafetensors } from '../../src/codec/safetensors.js';
import { tempDir } from '../helpers/tmp.js';

const ROPE = { theta: 10000, rotary_dim: 8, layout: 'neox', scaling: { type: 'default' } };

function capture(
  tokens: number,
  shape: [number, number, number],
  opts: { nan?: boolean; rope?: unknown } = {},
): Buffer {
  const [l, h, d] = shape;
  const k = Float32Array.from({ length: tokens * l * h * d }, (_, i) => Math.sin(i));
  if (opts.nan) k[5] = NaN;
  const pos = new BigInt64Array(tokens).map((_, i) => BigInt(i));
  return serializeSafetensors(
    [
      ['keys', float32Tensor(k, [tokens, l, h, d])],
      ['values', float32Tensor(k.slice(), [tokens, l, h, d])],
      ['positions', { dtype: 'I64', shape: [tokens], data: new Uint8Array(pos.buffer) }],
    ],
    {
      kvtc_capture: JSON.stringify({
        format: 1,
        model: 'test',
        model_fingerprint: 'ab'.repeat(16),
        layers: l,
        kv_heads: h,
        head_dim: d,
        ...('rope' in opts ? { rope: opts.rope } : { rope: ROPE }),
      }),
    },
  );
}

function folder(files: Record<string, Buffer>): string {
  const dir = tempDir(t, 'kvtc-cap-'); // the file's root test: removed when the file ends
  for (const [name, buf] of Object.entries(files)) writeFileSync(join(dir, name), buf);
  return dir;
}

const opts = { sinkTokens: 4, maxSamples: 1000, seed: 1, minSamples: 16 };

t.test('good captures pool, sinks excluded', async (t) => {
  const pooled = await poolCaptures(
    folder({ 'a.safetensors': capture(30, [2, 1, 8]), 'b.safetensors': capture(10, [2, 1, 8]) }),
    opts,
  );
  t.equal(pooled.n, 26 + 6);
  t.equal(pooled.files, 2);
});

t.test('mismatched shapes across captures', async (t) => {
  const dir = folder({ 'a.safetensors': capture(30, [2, 1, 8]), 'b.safetensors': capture(30, [2, 2, 8]) });
  await t.rejects(poolCaptures(dir, opts), {
    code: 'ERR_KVTC_CALIBRATION_INVALID',
    message: /b\.safetensors: model shape/,
  });
});

t.test('NaN in a capture', async (t) => {
  await t.rejects(poolCaptures(folder({ 'nan.safetensors': capture(30, [2, 1, 8], { nan: true }) }), opts), {
    message: /nan\.safetensors: non-finite value at token 0/,
  });
});

t.test('too few tokens', async (t) => {
  await t.rejects(poolCaptures(folder({ 'short.safetensors': capture(10, [2, 1, 8]) }), opts), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
    message: /6 token rows after excluding sinks, fewer than the 16/,
  });
});

t.test('missing RoPE parameters', async (t) => {
  await t.rejects(poolCaptures(folder({ 'norope.safetensors': capture(30, [2, 1, 8], { rope: undefined }) }), opts), {
    message: /norope\.safetensors: capture metadata lacks RoPE parameters/,
  });
});

t.test('an empty folder', async (t) => {
  await t.rejects(poolCaptures(folder({}), opts), { message: /no \.safetensors captures/ });
});
