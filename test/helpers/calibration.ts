import { fitCalibration } from '../../src/calibrate/fit.js';
import type { Calibration, ModelInfo, RopeJson } from '../../src/codec/calibration.js';
import { syntheticKv } from '../../src/calibrate/synthetic.js';

export const DEFAULT_ROPE: RopeJson = { theta: 10000, rotary_dim: 8, layout: 'neox', scaling: { type: 'default' } };

export function modelInfo(layers: number, kvHeads: number, headDim: number, rope: Partial<RopeJson> = {}): ModelInfo {
  return {
    name: `synthetic-${layers}x${kvHeads}x${headDim}`,
    fingerprint: '0123456789abcdef0123456789abcdef',
    layers,
    kv_heads: kvHeads,
    head_dim: headDim,
    rope: { ...DEFAULT_ROPE, rotary_dim: headDim, ...rope },
  };
}

/** A calibration fitted on synthetic KV (full-rank PCA, small DP), for codec tests. */
export async function syntheticCalibration(
  model: ModelInfo,
  options: { samples?: number; ratios?: number[]; seed?: number; rankCap?: number } = {},
): Promise<Calibration> {
  const p = model.layers * model.kv_heads * model.head_dim;
  const n = options.samples ?? Math.max(256, 2 * p);
  const kv = syntheticKv(n, p, 1000 + (options.seed ?? 1), options.seed ?? 1);
  return fitCalibration({
    model,
    keys: kv.keys,
    values: kv.values,
    n,
    ratios: options.ratios ?? [4, 16],
    rankCap: options.rankCap ?? p,
    powerIters: 4,
    oversample: 8,
    seed: options.seed ?? 1,
    dpSamples: Math.min(n, 512),
    sinkTokens: 4,
    windowTokens: 128,
    source: 'synthetic (test)',
  });
}

/**
 * The small calibration and KV whose records the CUDA refusal tests corrupt: 2 layers x 2 heads x
 * 8 dims, 256 float32 tokens, kvtc 4x, 4 sink tokens and an 8-token window.
 */
export async function smallRecordFixture(): Promise<{ cal: Calibration; keys: Float32Array; values: Float32Array }> {
  const kv = syntheticKv(256, 32, 1);
  const cal = await fitCalibration({
    model: modelInfo(2, 2, 8),
    keys: kv.keys,
    values: kv.values,
    n: 256,
    ratios: [4],
    rankCap: 32,
    powerIters: 2,
    oversample: 4,
    seed: 1,
    dpSamples: 128,
    sinkTokens: 4,
    windowTokens: 8,
    source: 't',
  });
  return { cal, keys: kv.keys, values: kv.values };
}
