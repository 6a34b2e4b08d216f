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

/** One stream's principal axes and the calibration rows projected onto them, before the DP. */
export interface StreamAxes {
  mean: Float32Array;
  /** [p, rank] row-major, orthonormal columns by decreasing variance */
  basis: Float32Array;
  rank: number;
  /** [rows, rank]: calibration rows projected onto the basis (what the DP quantizes) */
  projected: Float32Array;
  rows: number;
}

async function principalAxes(name: 'keys' | 'values', x: Float32Array, o: FitOptions, p: number): Promise<StreamAxes> {
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
  const rows = Math.min(o.dpSamples, o.n);
  const projected = native.stages.project(x.subarray(0, rows * p), {
    mean: pca.mean,
    basis: pca.basis,
    basisRank: rank,
    tokens: rows,
    rank,
    inverse: false,
  });
  return { mean: pca.mean, basis: pca.basis, rank, projected, rows };
}

async function planStream(
  name: 'keys' | 'values',
  axes: StreamAxes,
  p: number,
  budgets: number[],
  progress?: (stage: string, fraction: number) => void,
): Promise<StreamFit> {
  const dp = await loadNative().allocateBits(axes.projected, axes.rows, axes.rank, budgets, (f) =>
    progress?.(`${name} DP`, f),
  );
  // Keep the components some plan reads: the basis is trimmed to the largest plan rank.
  const keep = Math.max(1, ...dp.plans.map((pl) => pl.rank));
  const basis = new Float32Array(p * keep);
  for (let j = 0; j < p; j++) basis.set(axes.basis.subarray(j * axes.rank, j * axes.rank + keep), j * keep);
  return { tensors: { mean: axes.mean, basis, rank: keep }, plans: dp.plans };
}

function streamPlan(pl: NativePlanResult): StreamPlan {
  return {
    rank: pl.rank,
    groups: fromNativeGroups(pl.groups),
    bits_per_token: pl.bitsPerToken,
    expected_error: pl.expectedError,
  };
}

export interface PlanOptions {
  model: ModelInfo;
  ratios: number[];
  keys: StreamAxes;
  values: StreamAxes;
  settings: CalibrationSettings;
  progress?: (stage: string, fraction: number) => void;
}

/**
 * The bit allocation half of a calibration: the exact DP for each target ratio on each stream's
 * projected rows, then each basis trimmed to the last component any plan gives bits to. Used by
 * fitCalibration, and directly where the principal axes are known (the bench's synthetic shapes).
 */
export async function planCalibration(o: PlanOptions): Promise<Calibration> {
  const m = o.model;
  const p = m.layers * m.kv_heads * m.head_dim;
  for (const r of o.ratios)
    if (!(r >= 1)) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `Expected ratios >= 1 but received ${r}`);
  for (const axes of [o.keys, o.values])
    if (
      axes.mean.length !== p ||
      axes.basis.length !== p * axes.rank ||
      axes.projected.length !== axes.rows * axes.rank
    )
      throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `Expected axes of ${p} features`);
  const budgets = o.ratios.map((r) => Math.floor((16 * p) / r));
  const keys = await planStream('keys', o.keys, p, budgets, o.progress);
  const values = await planStream('values', o.values, p, budgets, o.progress);
  const plans: PlanInfo[] = o.ratios.map((ratio, i) => ({
    ratio,
    budget_bits: budgets[i]!,
    keys: streamPlan(keys.plans[i]!),
    values: streamPlan(values.plans[i]!),
  }));
  const body = { format: 'kvtc-calibration' as const, version: 1 as const, model: m, settings: o.settings, plans };
  const metadata: CalibrationMetadata = { ...body, calibration_id: calibrationId(keys.tensors, values.tensors, body) };
  return new Calibration(metadata, keys.tensors, values.tensors);
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
  const keys = await principalAxes('keys', o.keys, o, p);
  const values = await principalAxes('values', o.values, o, p);
  return planCalibration({
    model: m,
    ratios: o.ratios,
    keys,
    values,
    settings: {
      sink_tokens: o.sinkTokens,
      window_tokens: o.windowTokens,
      rank_cap: o.rankCap,
      power_iters: o.powerIters,
      oversample: o.oversample,
      seed: o.seed,
      samples: o.n,
      dp_samples: Math.min(o.dpSamples, o.n),
      source: o.source,
    },
    progress: o.progress,
  });
}
