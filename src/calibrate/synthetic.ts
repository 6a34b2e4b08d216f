/**
 * Synthetic KV with a real-KV-like spectrum, for tests and benchmarks of shapes without a
 * captured model: coefficients with standard deviations decaying as a power law
 * (sigma_j = (1 + j)^-alpha) times a random sign-flipped, permuted Walsh-Hadamard rotation of
 * the feature space (an orthonormal basis that is dense, so projection costs a real GEMM), plus
 * a per-feature mean. The PCA fitted on it recovers the rotation; the DP sees a decaying
 * spectrum like the one real caches show (paper Fig. 6).
 */
import { toNativeRope, type Calibration, type ModelInfo } from '../codec/calibration.js';
import { loadNative } from '../codec/native.js';
import { KvtcError } from '../core/errors.js';
import { planCalibration, type StreamAxes } from './fit.js';

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussian(rand: () => number): () => number {
  return () => {
    const u = Math.max(rand(), 1e-12),
      v = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/** In-place fast Walsh-Hadamard transform of the first 2^k entries, normalized. */
function fwht(x: Float32Array, n: number): void {
  for (let h = 1; h < n; h *= 2) {
    for (let i = 0; i < n; i += 2 * h) {
      for (let j = i; j < i + h; j++) {
        const a = x[j]!,
          b = x[j + h]!;
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const s = 1 / Math.sqrt(n);
  for (let i = 0; i < n; i++) x[i]! *= s;
}

export interface SyntheticKv {
  keys: Float32Array;
  values: Float32Array;
}

/** Values are drawn like keys, at this scale (same axes and mean, a quarter of the variance). */
export const SYNTHETIC_VALUE_SCALE = 0.5;

/** The distribution that `seed` fixes: rotation (permutation, signs, Hadamard blocks), mean, spectrum. */
interface SyntheticDistribution {
  /** component j (standard deviation sigma[j]) lies along Hadamard column perm[j] */
  perm: number[];
  signs: Float32Array;
  mean: Float32Array;
  sigma: Float32Array;
  /** [start, size] of the Hadamard blocks: the largest powers of two that tile p */
  blocks: [number, number][];
}

function distribution(p: number, seed: number, alpha: number): SyntheticDistribution {
  const rand = mulberry32(seed);
  const normal0 = gaussian(rand);
  const perm = Array.from({ length: p }, (_, i) => i);
  for (let i = p - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const signs = Float32Array.from({ length: p }, () => (rand() < 0.5 ? -1 : 1));
  const mean = Float32Array.from({ length: p }, () => normal0() * 0.5);
  const sigma = Float32Array.from({ length: p }, (_, j) => 4 * Math.pow(1 + j, -alpha));
  // Largest power-of-two blocks tile p (e.g. 5760 = 4096 + 1024 + 512 + 128).
  const blocks: [number, number][] = [];
  for (let at = 0, left = p; left > 0;) {
    const n = 2 ** Math.floor(Math.log2(left));
    blocks.push([at, n]);
    at += n;
    left -= n;
  }
  return { perm, signs, mean, sigma, blocks };
}

/**
 * `tokens` rows of p features per stream. p need not be a power of two (blocks of 2^k).
 * `seed` fixes the distribution (rotation, mean); `sampleSeed` the rows drawn from it, so a
 * calibration and the data it is tested on share the former and differ in the latter.
 */
export function syntheticKv(tokens: number, p: number, sampleSeed: number, seed = 1, alpha = 0.9): SyntheticKv {
  const { perm, signs, mean, sigma, blocks } = distribution(p, seed, alpha);
  const normal = gaussian(mulberry32(sampleSeed * 7919 + 17));
  const make = (scale: number) => {
    const out = new Float32Array(tokens * p);
    const z = new Float32Array(p);
    for (let t = 0; t < tokens; t++) {
      for (let j = 0; j < p; j++) z[perm[j]!] = normal() * sigma[j]! * scale;
      for (const [at, n] of blocks) {
        const view = z.subarray(at, at + n);
        fwht(view, n);
      }
      for (let j = 0; j < p; j++) out[t * p + j] = z[j]! * signs[j]! + mean[j]!;
    }
    return out;
  };
  return { keys: make(1), values: make(SYNTHETIC_VALUE_SCALE) };
}

export interface SyntheticAxes {
  mean: Float32Array;
  /** [p, rank] row-major: the `rank` principal axes, by decreasing variance */
  basis: Float32Array;
  /** standard deviation of each of the `rank` components for keys (values: SYNTHETIC_VALUE_SCALE times it) */
  sigma: Float32Array;
}

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}

/**
 * The exact principal axes of syntheticKv's distribution for `seed`: what a PCA of its rows
 * converges to, without drawing or fitting any (seconds for the 8B shape at rank 6144, a rank
 * whose randomized SVD did not finish in 10 minutes on a 16-core host). Axis j is the
 * sign-flipped Hadamard column perm[j]: entry i is signs[i] (-1)^popcount((i - at) & (k - at))
 * / sqrt(n) inside k = perm[j]'s block [at, at + n), zero outside it.
 */
export function syntheticPrincipalAxes(p: number, rank: number, seed = 1, alpha = 0.9): SyntheticAxes {
  if (!Number.isInteger(rank) || rank < 1 || rank > p)
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `Expected a rank in 1..${p} but received ${rank}`);
  const { perm, signs, mean, sigma, blocks } = distribution(p, seed, alpha);
  const basis = new Float32Array(p * rank);
  for (let j = 0; j < rank; j++) {
    const k = perm[j]!;
    const [at, n] = blocks.find(([a, m]) => k >= a && k < a + m)!;
    const scale = 1 / Math.sqrt(n);
    for (let i = at; i < at + n; i++)
      basis[i * rank + j] = (popcount((i - at) & (k - at)) & 1 ? -scale : scale) * signs[i]!;
  }
  return { mean, basis, sigma: sigma.slice(0, rank) };
}

/**
 * One stream's axes for planCalibration: the exact axes and `rows` coefficient rows drawn in them
 * (scale 1 for keys, SYNTHETIC_VALUE_SCALE for values), what the DP quantizes.
 */
export function syntheticStreamAxes(axes: SyntheticAxes, rows: number, scale: number, seed: number): StreamAxes {
  const rank = axes.sigma.length;
  const normal = gaussian(mulberry32(seed));
  const projected = new Float32Array(rows * rank);
  for (let t = 0; t < rows; t++)
    for (let j = 0; j < rank; j++) projected[t * rank + j] = normal() * axes.sigma[j]! * scale;
  return { mean: axes.mean, basis: axes.basis, rank, projected, rows };
}

export interface SyntheticAxesCalibrationOptions {
  model: ModelInfo;
  ratios: number[];
  /** components the DP may keep (at most p) */
  rankCap: number;
  /** coefficient rows the DP quantizes (default 256) */
  rows?: number;
  /** seed of those rows (the distribution is syntheticKv's default seed 1) */
  seed?: number;
  sinkTokens: number;
  windowTokens: number;
  source: string;
  progress?: (stage: string, fraction: number) => void;
}

/**
 * A calibration of syntheticKv's distribution built on its exact principal axes: the DP of
 * planCalibration on rows drawn in those axes, no PCA. What a fit on its rows converges to.
 */
export async function syntheticAxesCalibration(o: SyntheticAxesCalibrationOptions): Promise<Calibration> {
  const p = o.model.layers * o.model.kv_heads * o.model.head_dim;
  const rank = Math.min(o.rankCap, p);
  const rows = o.rows ?? 256;
  const seed = o.seed ?? 4242;
  const axes = syntheticPrincipalAxes(p, rank);
  return planCalibration({
    model: o.model,
    ratios: o.ratios,
    keys: syntheticStreamAxes(axes, rows, 1, seed),
    values: syntheticStreamAxes(axes, rows, SYNTHETIC_VALUE_SCALE, seed + 1),
    settings: {
      sink_tokens: o.sinkTokens,
      window_tokens: o.windowTokens,
      rank_cap: rank,
      power_iters: 0,
      oversample: 0,
      seed,
      samples: rows,
      dp_samples: rows,
      source: o.source,
    },
    progress: o.progress,
  });
}

/**
 * Synthetic keys are generated in the RoPE-free frame the calibration is fitted in; a serving
 * engine caches them rotated. This applies the model's RoPE at positions pos0.. (a copy).
 */
export function applyRope(keys: Float32Array, tokens: number, pos0: number, model: ModelInfo): Float32Array {
  return loadNative().stages.ropeRotate(keys, {
    tokens,
    heads: model.layers * model.kv_heads,
    headDim: model.head_dim,
    positionStart: pos0,
    rope: toNativeRope(model.rope),
    inverse: false,
  });
}
