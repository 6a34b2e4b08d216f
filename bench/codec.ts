/**
 * `kvtc-sidecar bench codec`: encode and decode throughput per model shape, each beside the BLAS
 * GEMM of the same shape timed in the same process (the projection is the pipeline's floor), so
 * the figures are ratios that hold on any machine. Inputs are bfloat16 (what serving engines
 * cache). By default the KV is synthetic, with a power-law spectrum (src/calibrate/synthetic.ts),
 * and the calibration is built on its exact principal axes, cached under bench/.cache. With
 * `--kv DIR --calibration FILE` (realInput) it is a model's captured KV, tiled to the length, under
 * that model's own calibration: real ratios, and record sizes as a serving engine's KV gives them.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

import { listCaptures, readCapture, unropedKeys } from '../src/calibrate/captures.js';
import { applyRope, syntheticAxesCalibration, syntheticKv, type SyntheticKv } from '../src/calibrate/synthetic.js';
import { loadCalibration, parseCalibration, type Calibration } from '../src/codec/calibration.js';
import { KvtcError } from '../src/core/errors.js';
import { decode, encode, ENCODE_DEFAULTS } from '../src/codec/codec.js';
import { loadNative } from '../src/codec/native.js';
import type { GpuProjection } from '../src/codec/paged.js';

export interface BenchShape {
  name: string;
  layers: number;
  kvHeads: number;
  headDim: number;
  /** tokens encoded per run */
  tokens: number;
  /** rank cap of the synthetic calibration (the DP keeps at most this many components) */
  rankCap: number;
}

export const SHAPES: BenchShape[] = [
  { name: 'stories260k', layers: 5, kvHeads: 4, headDim: 8, tokens: 4096, rankCap: 160 },
  { name: 'smollm2', layers: 30, kvHeads: 3, headDim: 64, tokens: 4096, rankCap: 2048 },
  { name: '1b', layers: 16, kvHeads: 8, headDim: 64, tokens: 4096, rankCap: 2048 },
  { name: '8b', layers: 32, kvHeads: 8, headDim: 128, tokens: 2048, rankCap: 2048 },
];

export interface BenchResult {
  shape: string;
  tokens: number;
  raw_bytes: number;
  record_bytes: number;
  ratio: number;
  /** ratio over the transform-coded tokens only (the paper's accounting) */
  ratio_coded: number;
  encode_gbps: number;
  decode_gbps: number;
  gemm_ratio_encode: number;
  gemm_ratio_decode: number;
  rank_keys: number;
  rank_values: number;
  target_ratio: number;
  /** DEFLATE chunk size of the records */
  chunk_bytes: number;
  /**
   * cpu: indexed DEFLATE sections (what the CUDA backend writes), an entry point every so many
   * bytes; 0: plain sections. CUDA records are always indexed at the backend's default stride.
   */
  entry_stride?: number;
  /** DEFLATE level of the records; 0: chunks stored, no entropy coding (absent before run v: 6) */
  deflate_level?: number;
  /** 'synthetic', or 'captured: DIR' (realInput; absent before run v: synthetic) */
  input?: string;
}

export interface BenchOptions {
  shapes: BenchShape[];
  ratio: number;
  reps: number;
  cacheDir: string;
  progress?: (label: string, fraction: number) => void;
  /** DEFLATE chunk size (default: the backend's) */
  chunkBytes?: number;
  /** cpu only: write indexed sections, to time how the CPU decodes GPU-written records */
  entryStride?: number;
  /** DEFLATE level (default 6); 0 stores the chunks without entropy coding */
  deflateLevel?: number;
  /** captured KV and its model's calibration instead of the synthetic pair (realInput) */
  real?: RealInput;
}

/** A model's captured KV (RoPE removed), to be tiled to a run's length, and its calibration. */
export interface RealInput {
  calibration: Calibration;
  keys: Float32Array;
  values: Float32Array;
  tokens: number;
  /** the captures' folder, reported as each result's `input` */
  source: string;
}

/**
 * Reads every capture of `dir` (kvtc_connector.capture's files) and the calibration for their
 * model. Each capture's first `sinkTokens` rows are left out: tiled to thousands of tokens, a
 * document's attention sinks would otherwise recur mid-sequence, which a real context has once.
 */
export async function realInput(dir: string, calibrationFile: string, sinkTokens = 4): Promise<RealInput> {
  const calibration = await loadCalibration(calibrationFile);
  const m = calibration.model;
  const p = calibration.featureDim;
  const keys: Float32Array[] = [],
    values: Float32Array[] = [];
  let tokens = 0;
  for (const file of await listCaptures(dir)) {
    const c = await readCapture(file);
    if (c.model.fingerprint !== m.fingerprint)
      throw new KvtcError(
        'ERR_KVTC_MODEL_MISMATCH',
        `${file}: captured from model ${c.model.fingerprint}, the calibration is for ${m.fingerprint}`,
      );
    const skip = Math.min(sinkTokens, c.tokens);
    keys.push(unropedKeys(c).subarray(skip * p));
    values.push(c.values.subarray(skip * p));
    tokens += c.tokens - skip;
  }
  if (tokens === 0) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${dir}: no captured tokens past the sinks`);
  const concat = (parts: Float32Array[]) => {
    const out = new Float32Array(tokens * p);
    let at = 0;
    for (const x of parts) {
      out.set(x, at);
      at += x.length;
    }
    return out;
  };
  return { calibration, keys: concat(keys), values: concat(values), tokens, source: dir };
}

/** A result's `input`: where its KV came from. */
function inputOf(o: BenchOptions): string {
  return o.real ? `captured: ${o.real.source}` : 'synthetic';
}

/** The shape of `real`'s model: the bench shape of the same dimensions (its name), or its own. */
export function realShape(real: RealInput, pool: BenchShape[]): BenchShape {
  const m = real.calibration.model;
  const same = pool.find((s) => s.layers === m.layers && s.kvHeads === m.kv_heads && s.headDim === m.head_dim);
  return {
    name: same?.name ?? m.name,
    layers: m.layers,
    kvHeads: m.kv_heads,
    headDim: m.head_dim,
    tokens: same?.tokens ?? 4096,
    rankCap: m.layers * m.kv_heads * m.head_dim,
  };
}

/** `tokens` rows of `real`'s KV (RoPE removed), its captures repeated in order. */
function tiledRealKv(real: RealInput, tokens: number): SyntheticKv {
  const p = real.calibration.featureDim;
  const keys = new Float32Array(tokens * p),
    values = new Float32Array(tokens * p);
  for (let at = 0; at < tokens; at += real.tokens) {
    const n = Math.min(real.tokens, tokens - at);
    keys.set(real.keys.subarray(0, n * p), at * p);
    values.set(real.values.subarray(0, n * p), at * p);
  }
  return { keys, values };
}

export function toBf16(x: Float32Array): Uint16Array {
  const u32 = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = u32[i]!;
    out[i] = (v + 0x7fff + ((v >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Little-endian bf16 elements (toBf16's, or a bf16 cache's bytes) as floats. */
export function fromBf16(raw: Uint8Array): Float32Array {
  const out = new Float32Array(raw.length / 2);
  const word = new Uint32Array(out.buffer);
  for (let i = 0; i < out.length; i++) word[i] = (raw[2 * i]! | (raw[2 * i + 1]! << 8)) << 16;
  return out;
}

/**
 * A calibration of the synthetic distribution: its exact principal axes (syntheticPrincipalAxes)
 * and the DP on rows drawn in those axes. A randomized SVD converges to the same axes, but costs
 * minutes per shape (about 100 s of every GPU call for the 8B shape at rank 2048, and far more at
 * rank 6144); what the bench times does not depend on how the axes were found.
 */
async function syntheticCalibration(shape: BenchShape, ratio: number, o: BenchOptions): Promise<Calibration> {
  const p = shape.layers * shape.kvHeads * shape.headDim;
  const rank = Math.min(shape.rankCap, p);
  const file = join(o.cacheDir, `synthetic-axes-${shape.name}-cr${ratio}-rank${rank}.safetensors`);
  if (existsSync(file)) return parseCalibration(readFileSync(file), file);
  o.progress?.(`${shape.name}: principal axes`, 0);
  const cal = await syntheticAxesCalibration({
    model: {
      name: `synthetic-${shape.name}`,
      fingerprint: 'feedfacefeedfacefeedfacefeedface',
      layers: shape.layers,
      kv_heads: shape.kvHeads,
      head_dim: shape.headDim,
      rope: { theta: 500000, rotary_dim: shape.headDim, layout: 'neox', scaling: { type: 'default' } },
    },
    ratios: [ratio],
    rankCap: rank,
    sinkTokens: ENCODE_DEFAULTS.sinkTokens,
    windowTokens: ENCODE_DEFAULTS.windowTokens,
    source: 'synthetic power-law spectrum, exact principal axes (bench)',
    progress: (stage, f) => o.progress?.(`${shape.name}: ${stage}`, f),
  });
  mkdirSync(o.cacheDir, { recursive: true });
  writeFileSync(file, cal.serialize());
  return cal;
}

/**
 * syntheticKv(tokens, p, sampleSeed), cached under `cacheDir` as raw float32 (keys, then values):
 * drawing 4096 tokens of the 8B shape takes ~30 s of JavaScript, which every bench process of a
 * GPU call would otherwise repeat; reading them back takes about a second.
 */
function cachedSyntheticKv(tokens: number, p: number, sampleSeed: number, cacheDir: string): SyntheticKv {
  const file = join(cacheDir, `synthetic-kv-p${p}-t${tokens}-s${sampleSeed}.f32`);
  const n = tokens * p;
  if (existsSync(file) && statSync(file).size === 8 * n) {
    const all = new Float32Array(2 * n);
    new Uint8Array(all.buffer).set(readFileSync(file));
    return { keys: all.subarray(0, n), values: all.subarray(n) };
  }
  const kv = syntheticKv(tokens, p, sampleSeed);
  mkdirSync(cacheDir, { recursive: true });
  writeFileSync(file, new Uint8Array(kv.keys.buffer, kv.keys.byteOffset, kv.keys.byteLength));
  appendFileSync(file, new Uint8Array(kv.values.buffer, kv.values.byteOffset, kv.values.byteLength));
  return kv;
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

export async function benchShape(shape: BenchShape, o: BenchOptions): Promise<BenchResult> {
  const native = loadNative();
  const cal = o.real?.calibration ?? (await syntheticCalibration(shape, o.ratio, o));
  const p = cal.featureDim;
  const T = shape.tokens;
  o.progress?.(`${shape.name}: timing`, 0);
  const kv = o.real ? tiledRealKv(o.real, T) : cachedSyntheticKv(T, p, 42, o.cacheDir);
  kv.keys = applyRope(kv.keys, T, 0, cal.model); // as a serving engine caches them
  const chunk = {
    keys: toBf16(kv.keys),
    values: toBf16(kv.values),
    dtype: 'bfloat16' as const,
    tokens: T,
    tokenStart: 0,
  };
  const chunkBytes = o.chunkBytes ?? ENCODE_DEFAULTS.chunkBytes;
  const deflateLevel = o.deflateLevel ?? ENCODE_DEFAULTS.deflateLevel;
  const encodeOptions = { ratio: o.ratio, chunkBytes, entryStride: o.entryStride, deflateLevel };
  const record = await encode(cal, chunk, encodeOptions);
  const plan = cal.plans[cal.planId(o.ratio)]!;
  const info = (await decode(cal, record, { tokens: T, dtype: 'bfloat16' })).info;
  const coded = info.sections.filter((s) => s.kind.startsWith('coded'));
  const codedTokens = coded.length ? coded[0]!.tokens : 0;
  const codedBytes = coded.reduce((a, s) => a + s.storedBytes, 0);
  const gemm = (rank: number, transB: boolean) =>
    rank === 0 ? 0 : native.benchGemm({ m: codedTokens, n: transB ? p : rank, k: transB ? rank : p, transB, reps: 1 });
  // Interleaved repetitions, best of each: pipeline and baseline see the same machine state.
  let encodeS = Infinity,
    decodeS = Infinity,
    gemmEnc = Infinity,
    gemmDec = Infinity;
  for (let r = 0; r < o.reps; r++) {
    encodeS = Math.min(encodeS, await time(() => encode(cal, chunk, encodeOptions)));
    gemmEnc = Math.min(gemmEnc, gemm(plan.keys.rank, false) + gemm(plan.values.rank, false));
    decodeS = Math.min(decodeS, await time(() => decode(cal, record, { tokens: T, dtype: 'bfloat16' })));
    gemmDec = Math.min(gemmDec, gemm(plan.keys.rank, true) + gemm(plan.values.rank, true));
    o.progress?.(`${shape.name}: timing`, (r + 1) / o.reps);
  }
  const raw = T * p * 2 * 2;
  o.progress?.(`${shape.name}: done`, 1);
  return {
    shape: shape.name,
    tokens: T,
    raw_bytes: raw,
    record_bytes: record.length,
    ratio: raw / record.length,
    ratio_coded: codedBytes ? (codedTokens * p * 2 * 2) / codedBytes : 0,
    encode_gbps: raw / encodeS / 1e9,
    decode_gbps: raw / decodeS / 1e9,
    gemm_ratio_encode: gemmEnc ? encodeS / gemmEnc : 0,
    gemm_ratio_decode: gemmDec ? decodeS / gemmDec : 0,
    rank_keys: plan.keys.rank,
    rank_values: plan.values.rank,
    target_ratio: o.ratio,
    chunk_bytes: chunkBytes,
    entry_stride: o.entryStride ?? 0,
    deflate_level: deflateLevel,
    input: inputOf(o),
  };
}

export interface CudaBenchResult extends BenchResult {
  batch: number;
  gpu: string;
  date: string;
  d2h_copy_gbps: number;
  /** record memory served from the pool / fresh from the system, over the timed repetitions */
  record_pool_hits: number;
  record_pool_misses: number;
  /** KV read from and restored into a paged cache in place (vLLM's FlashAttention layout) */
  paged: boolean;
  /** newest tokens of each sequence kept raw (absent in results from before the option: 128) */
  window_tokens?: number;
  /** the GEMMs' precision: bf16, or fp8 (then gemm_ratio_* are against the fp8 GEMMs) */
  projection: GpuProjection;
  /** pipeline time over the bf16 cuBLAS GEMMs of the same shapes (= gemm_ratio_* for bf16) */
  bf16_gemm_ratio_encode: number;
  bf16_gemm_ratio_decode: number;
  /** streams the fused restore wrote over this row's runs (KVTC_FUSED_RESTORE=on; absent before run s) */
  fused_restores?: number;
}

export const CUDA_SHAPES: BenchShape[] = [
  { name: '8b', layers: 32, kvHeads: 8, headDim: 128, tokens: 8192, rankCap: 2048 },
  { name: '1b', layers: 16, kvHeads: 8, headDim: 64, tokens: 8192, rankCap: 2048 },
  { name: 'smollm2', layers: 30, kvHeads: 3, headDim: 64, tokens: 8192, rankCap: 2048 },
];

/**
 * The CUDA bench: device-resident bf16 KV (like a serving engine's cache) -> record in host
 * memory -> KV back in device memory, median of `reps`, beside the cuBLAS GEMMs of the same
 * shapes and a raw device-to-host copy of the same KV, all in this process. Inputs are 4096
 * distinct synthetic tokens repeated to the length (RoPE applied at every true position), or, with
 * `o.real`, a model's captured tokens repeated the same way. The coder shrinks the synthetic codes
 * more than real ones (run v, 16x plans, coded tokens: SmolLM2 shape 19.0x synthetic against 18.2x
 * captured; the 8B shape's synthetic codes 24.2x), so synthetic ratios are indicative only.
 */
export async function benchShapeCuda(
  shape: BenchShape,
  o: BenchOptions & {
    tokenCounts: number[];
    batches: number[];
    paged?: boolean;
    projection?: GpuProjection;
    windowTokens?: number;
  },
): Promise<CudaBenchResult[]> {
  const native = loadNative();
  if (!native.benchCuda)
    throw Object.assign(new Error('this addon was built without CUDA'), { code: 'ERR_KVTC_BACKEND_UNAVAILABLE' });
  const cal = o.real?.calibration ?? (await syntheticCalibration(shape, o.ratio, o));
  const p = cal.featureDim;
  const planId = cal.planId(o.ratio);
  const plan = cal.plans[planId]!;
  // Tokens repeat every `block` (RoPE applied at every true position).
  const block = o.real?.tokens ?? 4096;
  const base = o.real ?? cachedSyntheticKv(block, p, 42, o.cacheDir);
  const results: CudaBenchResult[] = [];
  const paged = o.paged ?? false;
  const projection = o.projection ?? 'bf16';
  const chunkBytes = o.chunkBytes ?? ENCODE_DEFAULTS.cudaChunkBytes;
  const deflateLevel = o.deflateLevel ?? ENCODE_DEFAULTS.deflateLevel;
  for (const T of o.tokenCounts) {
    const keys = new Uint16Array(T * p),
      values = new Uint16Array(T * p);
    for (let at = 0; at < T; at += block) {
      const n = Math.min(block, T - at);
      const k = applyRope(base.keys.subarray(0, n * p), n, at, cal.model);
      keys.set(toBf16(k), at * p);
      values.set(toBf16(base.values.subarray(0, n * p)), at * p);
    }
    for (const batch of o.batches) {
      o.progress?.(`${shape.name}: ${T} tokens x ${batch}`, 0);
      const fusedBefore = native.counters().fusedRestores;
      const f = native.benchCuda(cal.native, {
        keys,
        values,
        tokens: T,
        batch,
        planId,
        reps: o.reps,
        paged,
        chunkBytes,
        projection,
        windowTokens: o.windowTokens ?? ENCODE_DEFAULTS.windowTokens,
        deflateLevel,
      });
      const raw = T * p * 2 * 2 * batch;
      results.push({
        shape: shape.name,
        tokens: T,
        batch,
        paged,
        chunk_bytes: chunkBytes,
        deflate_level: deflateLevel,
        input: inputOf(o),
        window_tokens: o.windowTokens ?? ENCODE_DEFAULTS.windowTokens,
        raw_bytes: raw,
        record_bytes: f.recordBytes * batch,
        ratio: raw / (f.recordBytes * batch),
        ratio_coded: f.codedBytes ? (f.codedTokens * p * 2 * 2) / f.codedBytes : 0,
        encode_gbps: raw / f.encodeS / 1e9,
        decode_gbps: raw / f.decodeS / 1e9,
        gemm_ratio_encode: f.encodeS / f.gemmEncodeS,
        gemm_ratio_decode: f.decodeS / f.gemmDecodeS,
        projection,
        bf16_gemm_ratio_encode: f.encodeS / f.gemmBf16EncodeS,
        bf16_gemm_ratio_decode: f.decodeS / f.gemmBf16DecodeS,
        rank_keys: plan.keys.rank,
        rank_values: plan.values.rank,
        target_ratio: o.ratio,
        gpu: f.device,
        date: new Date().toISOString().slice(0, 10),
        d2h_copy_gbps: raw / f.d2hCopyS / 1e9,
        record_pool_hits: f.poolHits,
        record_pool_misses: f.poolMisses,
        fused_restores: native.counters().fusedRestores - fusedBefore,
      });
    }
  }
  return results;
}

/**
 * The environment settings that change what a bench times: the codec's knobs (KVTC_*, README's
 * list) and OpenMP's (OMP_*, GOMP_*), by name, so that an A/B run's JSON says which side it is.
 */
export function benchSettings(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(env).sort()) {
    if (/^(KVTC_|OMP_|GOMP_)/.test(name) && env[name] !== undefined) out[name] = env[name]!;
  }
  return out;
}

export function markdownTable(results: BenchResult[]): string {
  const rows = results.map(
    (r) =>
      `| ${r.shape} | ${r.tokens} | ${r.rank_keys}/${r.rank_values} | ${(r.raw_bytes / 2 ** 20).toFixed(1)} MiB | ${r.ratio.toFixed(2)} | ${r.ratio_coded.toFixed(2)} | ${r.encode_gbps.toFixed(3)} | ${r.decode_gbps.toFixed(3)} | ${r.gemm_ratio_encode.toFixed(2)} | ${r.gemm_ratio_decode.toFixed(2)} |`,
  );
  return [
    '| shape | tokens | rank K/V | raw (bf16) | ratio | ratio (coded tokens) | encode GB/s | decode GB/s | encode / GEMM | decode / GEMM |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}
