import t from 'tap';
import type { RopeJson } from '../../src/codec/calibration.js';
import { toNativeRope } from '../../src/codec/calibration.js';
import { loadNative } from '../../src/codec/native.js';
import { mulberry32, gaussian } from '../../src/calibrate/synthetic.js';
import { maxAbsDiff, ropeReference } from '../helpers/reference.js';

const native = loadNative();
const variants: [string, (d: number) => RopeJson][] = [
  ['neox default', (d) => ({ theta: 10000, rotary_dim: d, layout: 'neox', scaling: { type: 'default' } })],
  [
    'interleaved default',
    (d) => ({ theta: 10000, rotary_dim: d, layout: 'interleaved', scaling: { type: 'default' } }),
  ],
  ['neox partial rotary', (d) => ({ theta: 10000, rotary_dim: d / 2, layout: 'neox', scaling: { type: 'default' } })],
  ['neox linear x4', (d) => ({ theta: 10000, rotary_dim: d, layout: 'neox', scaling: { type: 'linear', factor: 4 } })],
  [
    'neox llama3',
    (d) => ({
      theta: 500000,
      rotary_dim: d,
      layout: 'neox',
      scaling: {
        type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    }),
  ],
];

for (const [name, make] of variants) {
  for (const headDim of [8, 64, 128]) {
    for (const tokens of [1, 7, 19, 989]) {
      if (headDim === 128 && tokens === 989 && name !== 'neox llama3') continue; // one large case per dim suffices
      t.test(`${name}, head_dim ${headDim}, ${tokens} tokens`, async (t) => {
        const rope = make(headDim);
        const heads = 3;
        const normal = gaussian(mulberry32(tokens * 131 + headDim));
        const x = Float32Array.from({ length: tokens * heads * headDim }, () => normal());
        const pos0 = 5000; // large absolute positions: angles must be exact there too
        const o = { tokens, heads, headDim, positionStart: pos0, rope: toNativeRope(rope) };
        const applied = native.stages.ropeRotate(x, { ...o, inverse: false });
        const ref = ropeReference(x, tokens, heads, headDim, pos0, rope, false);
        t.ok(maxAbsDiff(applied, ref) < 2e-6, `apply matches float64 reference (max diff ${maxAbsDiff(applied, ref)})`);
        const removed = native.stages.ropeRotate(applied, { ...o, inverse: true });
        t.ok(maxAbsDiff(removed, x) < 4e-6, `remove(apply(x)) == x (max diff ${maxAbsDiff(removed, x)})`);
        if (rope.rotary_dim < headDim) {
          let untouched = true;
          for (let i = 0; i < tokens * heads; i++)
            for (let j = rope.rotary_dim; j < headDim; j++)
              untouched &&= applied[i * headDim + j] === x[i * headDim + j];
          t.ok(untouched, 'dims beyond rotary_dim are not rotated');
        }
      });
    }
  }
}

t.test('invalid rotary_dim is refused with a coded error', async (t) => {
  const x = new Float32Array(8);
  t.throws(
    () =>
      native.stages.ropeRotate(x, {
        tokens: 1,
        heads: 1,
        headDim: 8,
        positionStart: 0,
        rope: { theta: 10000, rotaryDim: 7, layout: 'neox', scaling: 'default' },
        inverse: false,
      }),
    { code: 'ERR_KVTC_INVALID_ARGUMENT' },
  );
});
