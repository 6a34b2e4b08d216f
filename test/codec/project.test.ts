import t from 'tap';
import { loadNative } from '../../src/codec/native.js';
import { gaussian, mulberry32 } from '../../src/calibrate/synthetic.js';
import { maxAbsDiff, projectReference } from '../helpers/reference.js';

const native = loadNative();

// Orthonormal basis from Gram-Schmidt in float64 (p x rank).
function orthonormal(p: number, rank: number, seed: number): Float32Array {
  const normal = gaussian(mulberry32(seed));
  const cols: Float64Array[] = [];
  for (let c = 0; c < rank; c++) {
    const v = Float64Array.from({ length: p }, () => normal());
    for (const u of cols) {
      let dot = 0;
      for (let j = 0; j < p; j++) dot += v[j]! * u[j]!;
      for (let j = 0; j < p; j++) v[j]! -= dot * u[j]!;
    }
    const norm = Math.hypot(...v);
    for (let j = 0; j < p; j++) v[j]! /= norm;
    cols.push(v);
  }
  const out = new Float32Array(p * rank);
  for (let j = 0; j < p; j++) for (let c = 0; c < rank; c++) out[j * rank + c] = cols[c]![j]!;
  return out;
}

for (const [layers, heads, headDim] of [
  [5, 4, 8],
  [2, 1, 64],
  [1, 2, 128],
] as const) {
  const p = layers * heads * headDim;
  const basisRank = Math.min(p, 96);
  const basis = orthonormal(p, basisRank, p);
  const normal = gaussian(mulberry32(7));
  const mean = Float32Array.from({ length: p }, () => normal());
  for (const tokens of [1, 7, 19, 989]) {
    t.test(`project p=${p} (head_dim ${headDim}), ${tokens} tokens`, async (t) => {
      const x = Float32Array.from({ length: tokens * p }, () => normal() * 3);
      const rank = basisRank - 5; // a trimmed plan reads a prefix of the basis
      const d = native.stages.project(x, { mean, basis, basisRank, tokens, rank, inverse: false });
      const ref = projectReference(x, tokens, mean, basis, basisRank, rank);
      t.ok(maxAbsDiff(d, ref) < 1e-4 * Math.sqrt(p), `projection matches float64 (max diff ${maxAbsDiff(d, ref)})`);
      // Reconstruction: d V^T + mean, against float64.
      const back = native.stages.project(d, { mean, basis, basisRank, tokens, rank, inverse: true });
      const refBack = new Float64Array(tokens * p);
      for (let i = 0; i < tokens; i++)
        for (let j = 0; j < p; j++) {
          let s = mean[j]!;
          for (let c = 0; c < rank; c++) s += d[i * rank + c]! * basis[j * basisRank + c]!;
          refBack[i * p + j] = s;
        }
      t.ok(
        maxAbsDiff(back, refBack) < 1e-4 * Math.sqrt(rank),
        `reconstruction matches float64 (max diff ${maxAbsDiff(back, refBack)})`,
      );
    });
  }
}

t.test('full-rank project then reconstruct returns the input', async (t) => {
  const p = 40;
  const basis = orthonormal(p, p, 3);
  const normal = gaussian(mulberry32(11));
  const mean = Float32Array.from({ length: p }, () => normal());
  const x = Float32Array.from({ length: 19 * p }, () => normal());
  const o = { mean, basis, basisRank: p, tokens: 19, rank: p };
  const back = native.stages.project(native.stages.project(x, { ...o, inverse: false }), { ...o, inverse: true });
  t.ok(maxAbsDiff(back, x) < 1e-5, 'lossless up to float rounding');
});
