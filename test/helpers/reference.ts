/**
 * Float64 references of each codec stage, written independently of the native code: the tests
 * compare the C++ backend against these.
 */
import type { RopeJson } from '../../src/codec/calibration.js';

export function invFreq(rope: RopeJson): Float64Array {
  const half = rope.rotary_dim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = Math.pow(rope.theta, -(2 * i) / rope.rotary_dim);
  const s = rope.scaling;
  if (s.type === 'linear') for (let i = 0; i < half; i++) inv[i]! /= s.factor;
  if (s.type === 'llama3') {
    const lowWavelen = s.original_max_position_embeddings / s.low_freq_factor;
    const highWavelen = s.original_max_position_embeddings / s.high_freq_factor;
    for (let i = 0; i < half; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowWavelen) inv[i] = f / s.factor;
      else if (wavelen >= highWavelen) {
        const smooth =
          (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv[i] = ((1 - smooth) * f) / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

/** x: [tokens, heads, headDim]; returns the rotated copy in float64. */
export function ropeReference(
  x: ArrayLike<number>,
  tokens: number,
  heads: number,
  headDim: number,
  pos0: number,
  rope: RopeJson,
  inverse: boolean,
): Float64Array {
  const out = Float64Array.from(x);
  const inv = invFreq(rope);
  const half = rope.rotary_dim / 2;
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const a = rope.layout === 'neox' ? i : 2 * i;
        const b = rope.layout === 'neox' ? i + half : 2 * i + 1;
        const ang = (pos0 + t) * inv[i]!;
        const c = Math.cos(ang),
          s = inverse ? -Math.sin(ang) : Math.sin(ang);
        const x0 = out[base + a]!,
          x1 = out[base + b]!;
        out[base + a] = x0 * c - x1 * s;
        out[base + b] = x1 * c + x0 * s;
      }
    }
  }
  return out;
}

/** (x - mean) basis[:, :rank] in float64; basis is [p, basisRank] row-major. */
export function projectReference(
  x: ArrayLike<number>,
  tokens: number,
  mean: ArrayLike<number>,
  basis: ArrayLike<number>,
  basisRank: number,
  rank: number,
): Float64Array {
  const p = mean.length;
  const d = new Float64Array(tokens * rank);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < p; j++) {
      const v = x[t * p + j]! - mean[j]!;
      for (let c = 0; c < rank; c++) d[t * rank + c]! += v * basis[j * basisRank + c]!;
    }
  return d;
}

/** IEEE binary16 round-to-nearest-even, computed by scaling (not bit tricks). */
export function roundHalf(v: number): number {
  if (!Number.isFinite(v) || v === 0) return v;
  const a = Math.abs(v);
  if (a >= 65520) return Math.sign(v) * Infinity;
  const e = Math.max(Math.floor(Math.log2(a)), -14); // subnormals share the 2^-14 exponent
  const ulp = Math.pow(2, e - 10);
  let q = a / ulp;
  const f = Math.floor(q);
  const r = q - f;
  q = r > 0.5 || (r === 0.5 && f % 2 === 1) ? f + 1 : f;
  return Math.sign(v) * q * ulp;
}

/** LSB-first packing of `bits`-bit codes. */
export function packReference(codes: ArrayLike<number>, bits: number): Uint8Array {
  const out = new Uint8Array(Math.ceil((codes.length * bits) / 8));
  for (let k = 0; k < codes.length; k++) {
    const bit = k * bits;
    out[bit >> 3]! |= codes[k]! << (bit & 7);
  }
  return out;
}

export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
