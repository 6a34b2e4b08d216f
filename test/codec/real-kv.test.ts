// Round trip on real KV captured from stories260K (a trained Llama-2-architecture model), with
// the relative error per layer reported. The capture runs the real model through transformers.
import t from 'tap';
import { join } from 'node:path';
import { readdirSync } from 'node:fs';

import { poolCaptures, readCapture } from '../../src/calibrate/captures.js';
import { fitCalibration } from '../../src/calibrate/fit.js';
import { decode, encode } from '../../src/codec/codec.js';
import { captureStories, python } from '../helpers/python.js';
import { unropedKeys } from '../../src/calibrate/captures.js';
import { realKvCrossDecode } from '../helpers/real-kv.js';

if (!python()) {
  t.fail(
    'real-KV tests need the Python environment: run scripts/setup.sh (it creates .venv with torch and transformers)',
  );
} else {
  const calibDir = captureStories('stories-calib.txt', 'stories-calib');
  const evalDir = captureStories('stories-eval.txt', 'stories-eval');

  const pooled = await poolCaptures(calibDir, { sinkTokens: 4, maxSamples: 100000, seed: 1, minSamples: 16 });
  const cal = await fitCalibration({
    model: pooled.model,
    keys: pooled.keys,
    values: pooled.values,
    n: pooled.n,
    ratios: [4, 8, 16],
    rankCap: 160,
    powerIters: 8,
    oversample: 10,
    seed: 1,
    dpSamples: 2048,
    sinkTokens: 4,
    windowTokens: 32,
    source: calibDir,
  });

  t.test('calibration on real KV', async (t) => {
    t.equal(pooled.model.layers, 5);
    t.equal(cal.featureDim, 160);
    let prev = 0;
    for (const plan of cal.plans) {
      t.ok(
        plan.keys.bits_per_token <= plan.budget_bits && plan.values.bits_per_token <= plan.budget_bits,
        `kvtc ${plan.ratio}x within budget`,
      );
      t.ok(plan.keys.expected_error >= prev, 'less budget never lowers the error');
      prev = plan.keys.expected_error;
    }
  });

  const files = readdirSync(evalDir)
    .filter((f) => f.endsWith('.safetensors'))
    .sort();
  for (const ratio of [4, 8, 16]) {
    t.test(`held-out stories round trip at kvtc ${ratio}x`, async (t) => {
      const p = cal.featureDim,
        perLayer = 4 * 8;
      const errK = new Float64Array(5),
        errV = new Float64Array(5),
        norm = [new Float64Array(5), new Float64Array(5)];
      let raw = 0,
        coded = 0;
      // Squared error against the energy the plan's expected error is relative to: the centred
      // PCA-domain energy (RoPE removed from keys; rotation keeps distances).
      const centred = [0, 0],
        sq = [0, 0];
      for (const f of files) {
        const c = await readCapture(join(evalDir, f));
        const rec = await encode(
          cal,
          { keys: c.keys, values: c.values, dtype: 'float32', tokens: c.tokens },
          { ratio, windowTokens: 32 },
        );
        const out = await decode(cal, rec, { tokens: c.tokens, dtype: 'float32' });
        const k = new Float32Array(out.keys.buffer, out.keys.byteOffset, out.keys.length / 4);
        const v = new Float32Array(out.values.buffer, out.values.byteOffset, out.values.length / 4);
        const from = out.info.sinkTokens,
          to = c.tokens - out.info.windowTokens;
        for (let tk = from; tk < to; tk++)
          for (let j = 0; j < p; j++) {
            const l = Math.floor(j / perLayer);
            errK[l]! += (k[tk * p + j]! - c.keys[tk * p + j]!) ** 2;
            errV[l]! += (v[tk * p + j]! - c.values[tk * p + j]!) ** 2;
            norm[0]![l]! += c.keys[tk * p + j]! ** 2;
            norm[1]![l]! += c.values[tk * p + j]! ** 2;
          }
        const unroped = unropedKeys(c);
        for (let tk = from; tk < to; tk++)
          for (let j = 0; j < p; j++) {
            centred[0]! += (unroped[tk * p + j]! - cal.keys.mean[j]!) ** 2;
            centred[1]! += (c.values[tk * p + j]! - cal.values.mean[j]!) ** 2;
            sq[0]! += (k[tk * p + j]! - c.keys[tk * p + j]!) ** 2;
            sq[1]! += (v[tk * p + j]! - c.values[tk * p + j]!) ** 2;
          }
        raw += (to - from) * p * 2 * 2;
        coded += out.info.sections.filter((s) => s.kind.startsWith('coded')).reduce((a, s) => a + s.storedBytes, 0);
        t.equal(
          Buffer.compare(out.keys.subarray(0, 4 * p * 4), Buffer.from(c.keys.buffer, c.keys.byteOffset, 4 * p * 4)),
          0,
          `${f}: sinks exact`,
        );
      }
      const rel = (e: Float64Array, n: Float64Array) => Array.from(e, (x, l) => Math.sqrt(x / n[l]!));
      const rk = rel(errK, norm[0]!),
        rv = rel(errV, norm[1]!);
      t.comment(`kvtc ${ratio}x: ratio on compressed tokens (bf16 accounting) ${(raw / coded).toFixed(2)}`);
      t.comment(`  keys relative error per layer:   ${rk.map((x) => x.toFixed(3)).join(' ')}`);
      t.comment(`  values relative error per layer: ${rv.map((x) => x.toFixed(3)).join(' ')}`);
      // Held-out text must behave like the calibration data: its error, relative to the centred
      // energy, within twice what the DP measured on calibration rows.
      const plan = cal.plans[cal.planId(ratio)]!;
      for (const [i, name, expected] of [
        [0, 'keys', plan.keys.expected_error],
        [1, 'values', plan.values.expected_error],
      ] as const) {
        const got = sq[i]! / centred[i]!;
        t.ok(
          got <= 2 * expected + 0.005,
          `${name}: held-out relative squared error ${got.toFixed(4)} vs calibration ${expected.toFixed(4)}`,
        );
      }
      t.ok(
        raw / coded > ratio * 0.8,
        `achieved ratio on compressed tokens ${(raw / coded).toFixed(2)} is near the ${ratio}x target or above`,
      );
    });
  }

  // The cross-decode matrix's CPU half (test/gpu/real-kv.test.ts adds the CUDA backend on the GPU
  // machine): plain and indexed CPU records of three held-out stories, sinks and window exact,
  // the same bytes back from both, the middle within the calibration's error.
  t.test('cross-decode on real KV: plain and indexed CPU records', async (t) => {
    const three = files.slice(0, 3).map((f) => join(evalDir, f));
    const m = await realKvCrossDecode(cal, three, 8, ['cpu', 'cpu-indexed'], ['cpu']);
    t.same(Object.keys(m.errors).sort(), ['cpu->cpu', 'cpu-indexed->cpu']);
    t.equal(m.errors['cpu->cpu']!.keys, m.errors['cpu-indexed->cpu']!.keys, 'same payload, same error');
  });
}
