// Compression demo on a real model: encodes every held-out capture with each plan of the
// calibration, decodes it, and prints sizes, ratio and per-layer error.
//   node examples/compress-demo/demo.mjs --calibration FILE --kv DIR
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { decode, encode, loadCalibration } from '../../dist/src/index.js';
import { readCapture } from '../../dist/src/calibrate/captures.js';

const { values: args } = parseArgs({
  options: {
    calibration: { type: 'string' },
    kv: { type: 'string' },
    window: { type: 'string', default: '128' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (args.help || !args.calibration || !args.kv) {
  console.log('usage: node examples/compress-demo/demo.mjs --calibration FILE --kv DIR [--window N]');
  process.exit(args.help ? 0 : 2);
}

const cal = await loadCalibration(args.calibration);
const m = cal.model;
const p = cal.featureDim;
const perLayer = m.kv_heads * m.head_dim;
const files = (await readdir(args.kv)).filter((f) => f.endsWith('.safetensors')).sort();
console.log(`model ${m.name}: ${m.layers} layers x ${m.kv_heads} KV heads x ${m.head_dim} (p = ${p}); calibration ${cal.id}`);
console.log(`${files.length} held-out sequences from ${args.kv}; sinks 4 and the newest ${args.window} tokens kept raw\n`);

function relErr(a, b, from, to, col0, cols) {
  let num = 0, den = 0;
  for (let t = from; t < to; t++)
    for (let j = col0; j < col0 + cols; j++) {
      const x = b[t * p + j], d = a[t * p + j] - x;
      num += d * d;
      den += x * x;
    }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

for (const plan of cal.plans) {
  let raw = 0, stored = 0, codedRaw = 0, codedStored = 0, tokens = 0;
  const layerK = new Float64Array(m.layers), layerV = new Float64Array(m.layers);
  let t0 = performance.now(), encMs = 0, decMs = 0;
  for (const f of files) {
    const c = await readCapture(join(args.kv, f));
    const chunk = { keys: c.keys, values: c.values, dtype: 'float32', tokens: c.tokens, tokenStart: c.positionStart };
    // bf16 is what serving engines cache: count raw bytes at 2 bytes per element.
    t0 = performance.now();
    const rec = await encode(cal, chunk, { ratio: plan.ratio, windowTokens: Number(args.window) });
    encMs += performance.now() - t0;
    t0 = performance.now();
    const out = await decode(cal, rec, { tokens: c.tokens, dtype: 'float32' });
    decMs += performance.now() - t0;
    const k = new Float32Array(out.keys.buffer, out.keys.byteOffset, out.keys.length / 4);
    const v = new Float32Array(out.values.buffer, out.values.byteOffset, out.values.length / 4);
    const coded = out.info.sections.filter((s) => s.kind.startsWith('coded'));
    const from = out.info.sinkTokens, to = c.tokens - out.info.windowTokens;
    raw += c.tokens * p * 2 * 2;
    stored += rec.length - (out.info.sinkTokens + out.info.windowTokens) * p * 2 * 2; // raw tokens as bf16
    if (coded.length) {
      codedRaw += (to - from) * p * 2 * 2;
      codedStored += coded.reduce((a, s) => a + s.storedBytes, 0);
    }
    for (let l = 0; l < m.layers; l++) {
      layerK[l] += relErr(k, c.keys, from, to, l * perLayer, perLayer) * (to - from);
      layerV[l] += relErr(v, c.values, from, to, l * perLayer, perLayer) * (to - from);
    }
    tokens += to - from;
  }
  const fmt = (a) => Array.from(a, (x) => (x / Math.max(tokens, 1)).toFixed(3)).join(' ');
  console.log(`kvtc ${plan.ratio}x (keys ${plan.keys.rank} / values ${plan.values.rank} components):`);
  console.log(`  ${(raw / 2 ** 20).toFixed(2)} MiB bf16 -> ${(stored / 2 ** 20).toFixed(3)} MiB: ratio ${(raw / stored).toFixed(2)} overall, ${(codedRaw / codedStored).toFixed(2)} on compressed tokens`);
  console.log(`  relative error per layer on compressed tokens, keys:   ${fmt(layerK)}`);
  console.log(`  relative error per layer on compressed tokens, values: ${fmt(layerV)}`);
  console.log(`  encode ${encMs.toFixed(0)} ms, decode ${decMs.toFixed(0)} ms for ${files.length} sequences\n`);
}
