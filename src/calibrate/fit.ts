/**
 * Fits a calibration (paper section 3.1 and Appendix B.17): per stream (keys with RoPE removed,
 * values), the mean and a randomized-SVD basis, then the exact DP bit allocation for each target
 * ratio on the projected calibration rows, then the basis trimmed to the last component any plan
 * gives bits to.
 */
import {
  Calibration,
  calibrationId,
  fromNativeGroups,
  type CalibrationMetadata,
  type CalibrationSettings,
  type ModelInfo,
  type PlanInfo,
  type StreamPlan,
  type StreamTensors,
} from '../codec/calibration.js';
import { KvtcError } from '../core/errors.js';
import { loadNative, type NativePlanResult } from '../codec/native.js';

export interface FitOptions {
  model: ModelInfo;
  /** [n, p] rows, RoPE removed. */
  keys: Float32Array;
  values: Float32Array;
  n: number;
  ratios: number[];
  rankCap: number;
  powerIters: number;
  oversample: number;
  seed: number;
  /** Rows the DP simulates quantization on (the first ones of the pool). */
  dpSamples: number;
  sinkTokens: number;
  windowTokens: number;
  source: string;
  /** Called with (stage, fraction in [0, 1]). */
  progress?: (stage: string, fraction: number) => void;
}

interface StreamFit {
  tensors: StreamTensors;
  plans: NativePlanResult[];
}

async function fitStream(
  name: 'keys' | 'values',
  x: Float32Array,
  o: FitOptions,
  p: number,
  budgets: number[],
): Promise<StreamFit> {
  const native = loadNative();
  const rank = Math.min(o.rankCap, o.n, p);
  const pca = await native.fitPca(
    x,
    o.n,
    p,
    rank,
    { powerIters: o.powerIters, oversample: o.oversample, seed: o.seed },
    (f) => o.progress?.(`${name} PCA`, f),
  );
  const nd = Math.min(o.dpSamples, o.n);
  const projected = native.stages.project(x.subarray(0, nd * p), {
    mean: pca.mean,
    basis: pca.basis,
    basisRank: rank,
    tokens: nd,
    rank,
    inverse: false,
  });
  const dp = await native.allocateBits(projected, nd, rank, budgets, (f) => o.progress?.(`${name} DP`, f));
  // Keep the components some plan reads: the basis is trimmed to the largest plan rank.
  const keep = Math.max(1, ...dp.plans.map((pl) => pl.rank));
  const basis = new Float32Array(p * keep);
  for (let j = 0; j < p; j++) basis.set(pca.basis.subarray(j * rank, j * rank + keep), j * keep);
  return { tensors: { mean: pca.mean, basis, rank: keep }, plans: dp.plans };
}

function streamPlan(pl: NativePlanResult): StreamPlan {
  return {
    rank: pl.rank,
    groups: fromNativeGroups(pl.groups),
    bits_per_token: pl.bitsPerToken,
    expected_error: pl.expectedError,
  };
}

/** Fits and returns a calibration (already loaded into the native codec). */
export async function fitCalibration(o: FitOptions): Promise<Calibration> {
  const m = o.model;
  const p = m.layers * m.kv_heads * m.head_dim;
  if (o.keys.length !== o.n * p || o.values.length !== o.n * p)
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `Expected ${o.n} x ${p} samples per stream`);
  if (o.n < 2)
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `calibration needs at least 2 token rows, received ${o.n}`);
  for (const r of o.ratios)
    if (!(r >= 1)) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `Expected ratios >= 1 but received ${r}`);
  const budgets = o.ratios.map((r) => Math.floor((16 * p) / r));
  const keys = await fitStream('keys', o.keys, o, p, budgets);
  const values = await fitStream('values', o.values, o, p, budgets);
  const plans: PlanInfo[] = o.ratios.map((ratio, i) => ({
    ratio,
    budget_bits: budgets[i]!,
    keys: streamPlan(keys.plans[i]!),
    values: streamPlan(values.plans[i]!),
  }));
  const settings: CalibrationSettings = {
    sink_tokens: o.sinkTokens,
    window_tokens: o.windowTokens,
    rank_cap: o.rankCap,
    power_iters: o.powerIters,
    oversample: o.oversample,
    seed: o.seed,
    samples: o.n,
    dp_samples: Math.min(o.dpSamples, o.n),
    source: o.source,
  };
  const body = { format: 'kvtc-calibration' as const, version: 1 as const, model: m, settings, plans };
  const metadata: CalibrationMetadata = { ...body, calibration_id: calibrationId(keys.tensors, values.tensors, body) };
  return new Calibration(metadata, keys.tensors, values.tensors);
}
