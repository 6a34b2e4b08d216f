// The cross-decode matrix on real KV (captures of stories260K), shared by the CPU test
// (test/codec/real-kv.test.ts: the CPU encoders and decoder) and the GPU test
// (test/gpu/real-kv.test.ts: the same with the CUDA backend added). Throws (node:assert) on the
// first failure; returns what it measured.
import assert from 'node:assert/strict';

import { readCapture, unropedKeys } from '../../src/calibrate/captures.js';
import type { Calibration } from '../../src/codec/calibration.js';
import { decode, encode, type Backend } from '../../src/codec/codec.js';
import { relError } from './reference.js';

/** cpu-indexed: the CPU writing indexed chunks (entry points for the GPU's inflate lanes). */
export type Encoder = Backend | 'cpu-indexed';

export interface RealKvMeasure {
  /** Relative squared error of the coded middle against its centred energy, per encoder->decoder. */
  errors: Record<string, { keys: number; values: number }>;
  /** Worst relative difference between two decoders' restores of one record (0 with one decoder). */
  decoderSpread: number;
}

const WINDOW = 32;

function f32(b: Uint8Array): Float32Array {
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/**
 * Every capture encoded by every encoder at `ratio` and restored by every decoder: sinks and
 * window exact; the CPU's plain and indexed records (same payload, other entropy coding) restore
 * to the same bytes; the coded middle within twice the plan's calibration error plus 0.005 (the
 * CPU test's bound on held-out text) for every pair; two decoders of one record within
 * `maxSpread` of each other.
 */
export async function realKvCrossDecode(
  cal: Calibration,
  files: string[],
  ratio: number,
  encoders: Encoder[],
  decoders: Backend[],
  maxSpread = 0.01,
): Promise<RealKvMeasure> {
  const plan = cal.plans[cal.planId(ratio)]!;
  const p = cal.featureDim;
  const sq: Record<string, [number, number]> = {};
  const centred = [0, 0];
  let decoderSpread = 0;
  for (const file of files) {
    const c = await readCapture(file);
    const chunk = { keys: c.keys, values: c.values, dtype: 'float32' as const, tokens: c.tokens };
    const unroped = unropedKeys(c);
    let from = -1,
      to = -1;
    const records: Partial<Record<Encoder, Buffer>> = {};
    for (const enc of encoders) {
      const options =
        enc === 'cpu-indexed' ? { backend: 'cpu' as const, chunkBytes: 512, entryStride: 16 } : { backend: enc };
      const record = (records[enc] = await encode(cal, chunk, { ratio, windowTokens: WINDOW, ...options }));
      const restored: Float32Array[][] = [];
      for (const dec of decoders) {
        const out = await decode(cal, record, { tokens: c.tokens, dtype: 'float32', backend: dec });
        const k = f32(out.keys),
          v = f32(out.values);
        restored.push([k, v]);
        from = out.info.sinkTokens;
        to = c.tokens - out.info.windowTokens;
        const name = `${file} ${enc}->${dec}`;
        assert.deepEqual(k.subarray(0, from * p), c.keys.subarray(0, from * p), `${name}: key sinks exact`);
        assert.deepEqual(v.subarray(0, from * p), c.values.subarray(0, from * p), `${name}: value sinks exact`);
        assert.deepEqual(k.subarray(to * p), c.keys.subarray(to * p), `${name}: key window exact`);
        assert.deepEqual(v.subarray(to * p), c.values.subarray(to * p), `${name}: value window exact`);
        const e = (sq[`${enc}->${dec}`] ??= [0, 0]);
        for (let i = from * p; i < to * p; i++) {
          e[0] += (k[i]! - c.keys[i]!) ** 2;
          e[1] += (v[i]! - c.values[i]!) ** 2;
        }
      }
      for (let d = 1; d < restored.length; d++)
        for (const s of [0, 1]) {
          const [x, y] = [restored[d]![s]!, restored[0]![s]!];
          decoderSpread = Math.max(decoderSpread, relError(x.subarray(from * p, to * p), y.subarray(from * p, to * p)));
        }
    }
    if (records.cpu && records['cpu-indexed']) {
      // Plain and indexed chunks of one payload: every decoder gives the same bytes back.
      for (const dec of decoders) {
        const a = await decode(cal, records.cpu, { tokens: c.tokens, dtype: 'float32', backend: dec });
        const b = await decode(cal, records['cpu-indexed'], { tokens: c.tokens, dtype: 'float32', backend: dec });
        assert.ok(
          Buffer.from(a.keys).equals(Buffer.from(b.keys)) && Buffer.from(a.values).equals(Buffer.from(b.values)),
          `${file}: plain and indexed CPU records restore to the same bytes on ${dec}`,
        );
      }
    }
    for (let i = from * p; i < to * p; i++) {
      centred[0]! += (unroped[i]! - cal.keys.mean[i % p]!) ** 2;
      centred[1]! += (c.values[i]! - cal.values.mean[i % p]!) ** 2;
    }
  }
  const errors: RealKvMeasure['errors'] = {};
  for (const [pair, [k, v]] of Object.entries(sq)) {
    errors[pair] = { keys: k / centred[0]!, values: v / centred[1]! };
    for (const [name, got, expected] of [
      ['keys', k / centred[0]!, plan.keys.expected_error],
      ['values', v / centred[1]!, plan.values.expected_error],
    ] as const) {
      assert.ok(
        got <= 2 * expected + 0.005,
        `${pair} ${name}: relative squared error ${got.toFixed(4)} vs calibration ${expected.toFixed(4)}`,
      );
    }
  }
  assert.ok(decoderSpread <= maxSpread, `two decoders of one record differ by ${decoderSpread}`);
  return { errors, decoderSpread };
}
