// The synthetic distribution's exact principal axes: orthonormal, what its rows are made of, what a
// PCA of its rows finds, and a calibration planned on them that codes its rows as the plan says.
import t from 'tap';

import { planCalibration } from '../../src/calibrate/fit.js';
import {
  applyRope,
  SYNTHETIC_VALUE_SCALE,
  syntheticAxesCalibration,
  syntheticKv,
  syntheticPrincipalAxes,
  syntheticStreamAxes,
} from '../../src/calibrate/synthetic.js';
import { decode, encode } from '../../src/codec/codec.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { projectReference } from '../helpers/reference.js';

const model = modelInfo(5, 4, 8); // p = 160: Hadamard blocks of 128 and 32
const P = 160;

t.test('the axes are orthonormal and the rows are exactly mean + axes x coefficients', async (t) => {
  const axes = syntheticPrincipalAxes(P, P);
  let worst = 0;
  for (let a = 0; a < P; a++)
    for (let b = a; b < P; b++) {
      let dot = 0;
      for (let i = 0; i < P; i++) dot += axes.basis[i * P + a]! * axes.basis[i * P + b]!;
      worst = Math.max(worst, Math.abs(dot - (a === b ? 1 : 0)));
    }
  t.ok(worst < 1e-6, `B^T B = I (worst entry off by ${worst})`);

  const rows = 4000;
  const kv = syntheticKv(rows, P, 7);
  for (const [name, x, scale] of [
    ['keys', kv.keys, 1],
    ['values', kv.values, SYNTHETIC_VALUE_SCALE],
  ] as const) {
    const c = projectReference(x, rows, axes.mean, axes.basis, P, P);
    // Full rank: B c + mean gives the rows back (float32 rounding only).
    let err = 0;
    for (let i = 0; i < P; i++) {
      let v = axes.mean[i]!;
      for (let j = 0; j < P; j++) v += axes.basis[i * P + j]! * c[j]!;
      err = Math.max(err, Math.abs(v - x[i]!));
    }
    t.ok(err < 1e-4, `${name}: row 0 rebuilt within ${err}`);
    // Component j has standard deviation sigma_j * scale (4000 rows: about 2% sampling error).
    let worstRel = 0;
    for (const j of [0, 1, 2, 10, 50, 159]) {
      let ss = 0;
      for (let r = 0; r < rows; r++) ss += c[r * P + j]! ** 2;
      const want = (axes.sigma[j]! * scale) ** 2;
      worstRel = Math.max(worstRel, Math.abs(ss / rows / want - 1));
    }
    t.ok(worstRel < 0.1, `${name}: component variances as the spectrum says (worst ${worstRel.toFixed(3)} off)`);
  }
});

t.test('a fitted PCA finds the same leading axes', async (t) => {
  const cal = await syntheticCalibration(model, { ratios: [4], samples: 4000 });
  const axes = syntheticPrincipalAxes(P, 8);
  const fitted = cal.keys;
  for (let j = 0; j < 4; j++) {
    let dot = 0;
    for (let i = 0; i < P; i++) dot += fitted.basis[i * fitted.rank + j]! * axes.basis[i * 8 + j]!;
    t.ok(Math.abs(dot) > 0.98, `axis ${j}: |cos| = ${Math.abs(dot).toFixed(4)}`);
  }
});

t.test('a calibration planned on the exact axes codes rows with the error its plan expects', async (t) => {
  const cal = await syntheticAxesCalibration({
    model,
    ratios: [8],
    rankCap: P,
    rows: 512,
    seed: 99,
    sinkTokens: 0,
    windowTokens: 0,
    source: 'exact axes (test)',
  });
  t.equal(cal.metadata.settings.power_iters, 0, 'no PCA ran');
  const plan = cal.plans[0]!;
  t.ok(plan.keys.rank > 0 && plan.keys.rank <= P, `keys keep ${plan.keys.rank} of ${P} components`);

  // Fresh rows of the same distribution, keys rotated as an engine caches them (RoPE is an
  // orthogonal map per token, so errors compare in either frame).
  const tokens = 1024;
  const kv = syntheticKv(tokens, P, 31);
  const keys = applyRope(kv.keys, tokens, 0, model);
  const record = await encode(
    cal,
    { keys, values: kv.values, dtype: 'float32', tokens, tokenStart: 0 },
    { ratio: 8, sinkTokens: 0, windowTokens: 0 },
  );
  const out = await decode(cal, record, { tokens, dtype: 'float32' });
  for (const [name, orig, unrotated, got, expected] of [
    ['keys', keys, kv.keys, out.keys, plan.keys.expected_error],
    ['values', kv.values, kv.values, out.values, plan.values.expected_error],
  ] as const) {
    const dec = new Float32Array(got.buffer, got.byteOffset, tokens * P);
    let err = 0,
      energy = 0;
    for (let k = 0; k < tokens * P; k++) {
      err += (dec[k]! - orig[k]!) ** 2;
      energy += (unrotated[k]! - cal.keys.mean[k % P]!) ** 2; // keys and values share the mean
    }
    const rel = err / energy;
    t.ok(
      rel > 0.5 * expected && rel < 1.5 * expected,
      `${name}: relative squared error ${rel.toFixed(4)}, the plan expects ${expected.toFixed(4)}`,
    );
  }

  const axes = syntheticPrincipalAxes(P, P);
  const stream = syntheticStreamAxes(axes, 16, 1, 1);
  await t.rejects(
    planCalibration({
      model,
      ratios: [8],
      keys: { ...stream, rank: P - 1 },
      values: stream,
      settings: cal.metadata.settings,
    }),
    { code: 'ERR_KVTC_INVALID_ARGUMENT' },
    'axes of the wrong size are refused',
  );
});
