/**
 * encode / decode: the kvtc codec over the native addon (CPU backend; the CUDA backend reads and
 * writes the same record format). Validation and defaults live here; the native side runs one
 * job off the JavaScript thread.
 */
import { awaitNative, callNative, invalidArgument, KvtcError } from '../core/errors.js';
import type { Calibration } from './calibration.js';
import { loadNative, type NativeHeader, type Projection } from './native.js';

export type { Projection } from './native.js';

export type KvDtype = 'float32' | 'float16' | 'bfloat16';

export const DTYPE_CODE: Record<KvDtype, number> = { float32: 0, float16: 1, bfloat16: 2 };
const DTYPE_NAME: KvDtype[] = ['float32', 'float16', 'bfloat16'];

export function dtypeBytes(dtype: KvDtype): number {
  return dtype === 'float32' ? 4 : 2;
}

/**
 * A chunk of a sequence's KV cache, token-major: for each token, every layer's every KV head's
 * vector, i.e. `[tokens, layers, kv_heads, head_dim]`. Keys carry RoPE as the model caches them.
 */
export interface KvChunk {
  keys: Uint8Array | Float32Array | Uint16Array;
  values: Uint8Array | Float32Array | Uint16Array;
  dtype: KvDtype;
  tokens: number;
  /** Absolute position of the first token (RoPE is undone at these positions). Default 0. */
  tokenStart?: number;
}

export interface EncodeOptions {
  /** Target ratio of a plan in the calibration (e.g. 16). Default: the calibration's first plan. */
  ratio?: number;
  /** Absolute positions below this are kept raw (attention sinks). Default 4. */
  sinkTokens?: number;
  /** The newest tokens of the chunk kept raw. Default 128. */
  windowTokens?: number;
  /**
   * DEFLATE level 0..12 (libdeflate's on the CPU; the CUDA backend's own coder has one level).
   * 0 stores every chunk without entropy coding, on either backend: no coder on encode, a copy
   * instead of an inflate on a GPU's restore, records about 10 % larger at kvtc 16x
   * (docs/benchmarks.md). Any decoder reads either. Default 6.
   */
  deflateLevel?: number;
  /** Bytes per independent DEFLATE chunk. Default 65536 on the CPU, 16384 on CUDA. */
  chunkBytes?: number;
  /**
   * CPU backend: 0 (default) writes libdeflate chunks; a multiple of 16 writes indexed chunks
   * (kvtc's literal coder, an entry point every `entryStride` payload bytes) that a GPU inflates
   * many times faster. The CUDA backend always writes indexed chunks.
   */
  entryStride?: number;
  /** 'cpu' (default) or 'cuda' (a CUDA build with a device); both write the same format. */
  backend?: Backend;
  /**
   * Precision of the projection's operands. The CPU backend computes in fp32 by default and can
   * round them to 'bf16' (what the CUDA backend's GEMM reads) or 'fp8' (e4m3, scaled per token
   * and per basis vector) to measure what those cost in quality. The CUDA backend runs its GEMMs
   * in 'bf16' (default) or 'fp8' (e4m3 tensor cores, the same scaling; GEMMs 1.7x faster on an H200,
   * docs/benchmarks.md). Records do not record it: any decoder reads them.
   */
  projection?: Projection;
}

export type Backend = 'cpu' | 'cuda';

export const ENCODE_DEFAULTS = Object.freeze({
  sinkTokens: 4,
  windowTokens: 128,
  deflateLevel: 6,
  chunkBytes: 64 * 1024,
  /**
   * CUDA: smaller chunks are more homogeneous (a chunk rarely mixes a group's scales with its
   * codes): 1.3% smaller records at 16x on the 8B shape, and their 512-byte runs inflate faster.
   */
  cudaChunkBytes: 16 * 1024,
});

export interface RecordSection {
  kind: 'raw-keys' | 'raw-values' | 'coded-keys' | 'coded-values';
  tokenOffset: number;
  tokens: number;
  storedBytes: number;
}

/** What a record's header says (see docs/format.md). */
export interface RecordInfo {
  formatVersion: number;
  calibrationId: string;
  modelFingerprint: string;
  tokenStart: number;
  tokens: number;
  featureDim: number;
  planId: number;
  dtype: KvDtype;
  sinkTokens: number;
  windowTokens: number;
  recordBytes: number;
  sections: RecordSection[];
}

export interface DecodedChunk {
  keys: Buffer;
  values: Buffer;
  dtype: KvDtype;
  tokens: number;
  tokenStart: number;
  info: RecordInfo;
}

const KIND: RecordSection['kind'][] = ['raw-keys', 'raw-values', 'coded-keys', 'coded-values'];

export function toInfo(h: NativeHeader): RecordInfo {
  return {
    formatVersion: h.formatVersion,
    calibrationId: h.calibrationId.toString('hex'),
    modelFingerprint: h.modelFingerprint.toString('hex'),
    tokenStart: h.tokenStart,
    tokens: h.tokens,
    featureDim: h.featureDim,
    planId: h.planId,
    dtype: DTYPE_NAME[h.dtype]!,
    sinkTokens: h.sinkTokens,
    windowTokens: h.windowTokens,
    recordBytes: h.recordBytes,
    sections: h.sections.map((s) => ({
      kind: KIND[s.kind - 1]!,
      tokenOffset: s.tokenOffset,
      tokens: s.tokens,
      storedBytes: s.storedBytes,
    })),
  };
}

function bytesOf(a: Uint8Array | Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function checkCount(name: string, v: number | undefined, min = 0): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < min || v > 0xffffffff) throw invalidArgument(`an integer >= ${min}`, name, v);
  return v;
}

/**
 * Compresses a chunk of KV cache into one self-describing record.
 * @throws {KvtcError} ERR_KVTC_INVALID_ARGUMENT (shapes, dtype), ERR_KVTC_PLAN_UNKNOWN (ratio).
 */
export async function encode(calibration: Calibration, chunk: KvChunk, options: EncodeOptions = {}): Promise<Buffer> {
  if (!(chunk.dtype in DTYPE_CODE)) throw invalidArgument("'float32', 'float16' or 'bfloat16'", 'dtype', chunk.dtype);
  const tokens = checkCount('tokens', chunk.tokens, 1)!;
  const expected = tokens * calibration.featureDim * dtypeBytes(chunk.dtype);
  if (chunk.keys.byteLength !== expected || chunk.values.byteLength !== expected) {
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      `Expected keys and values of ${expected} bytes (${tokens} tokens x ${calibration.featureDim} features, ${chunk.dtype}) but received ${chunk.keys.byteLength} and ${chunk.values.byteLength}`,
    );
  }
  const planId = options.ratio === undefined ? 0 : calibration.planId(options.ratio);
  return awaitNative(() =>
    loadNative().encode(calibration.native, {
      keys: bytesOf(chunk.keys),
      values: bytesOf(chunk.values),
      dtype: DTYPE_CODE[chunk.dtype],
      tokens,
      tokenStart: checkCount('tokenStart', chunk.tokenStart) ?? 0,
      planId,
      sinkTokens: checkCount('sinkTokens', options.sinkTokens) ?? ENCODE_DEFAULTS.sinkTokens,
      windowTokens: checkCount('windowTokens', options.windowTokens) ?? ENCODE_DEFAULTS.windowTokens,
      deflateLevel: checkCount('deflateLevel', options.deflateLevel) ?? ENCODE_DEFAULTS.deflateLevel,
      chunkBytes:
        checkCount('chunkBytes', options.chunkBytes, 1) ??
        (options.backend === 'cuda' ? ENCODE_DEFAULTS.cudaChunkBytes : ENCODE_DEFAULTS.chunkBytes),
      entryStride: checkCount('entryStride', options.entryStride) ?? 0,
      backend: options.backend ?? 'cpu',
      projection: options.projection,
    }),
  );
}

export interface DecodeExpectation {
  /** Tokens the caller expects the record to hold. */
  tokens: number;
  /** Element type the caller expects. */
  dtype: KvDtype;
  /** 'cpu' (default) or 'cuda'. */
  backend?: Backend;
  /** Precision of the inverse projection's operands (EncodeOptions.projection); default fp32 on the CPU. */
  projection?: Projection;
}

/**
 * Decompresses a record. The caller states what it expects; every length and CRC is checked
 * before anything is allocated.
 * @throws {KvtcError} ERR_KVTC_RECORD_* for malformed records, ERR_KVTC_CALIBRATION_MISMATCH for a
 * record of another calibration, ERR_KVTC_MODEL_MISMATCH for another model.
 */
export async function decode(
  calibration: Calibration,
  record: Uint8Array,
  expect: DecodeExpectation,
): Promise<DecodedChunk> {
  if (!(expect.dtype in DTYPE_CODE)) throw invalidArgument("'float32', 'float16' or 'bfloat16'", 'dtype', expect.dtype);
  const tokens = checkCount('tokens', expect.tokens, 0)!;
  const out = await awaitNative(() =>
    loadNative().decode(
      calibration.native,
      record,
      2 * tokens * calibration.featureDim * dtypeBytes(expect.dtype),
      expect.backend ?? 'cpu',
      expect.projection,
    ),
  );
  const info = toInfo(out.header);
  if (info.dtype !== expect.dtype) {
    throw new KvtcError(
      'ERR_KVTC_RECORD_SIZE_MISMATCH',
      `record holds ${info.dtype}, the caller expects ${expect.dtype}`,
    );
  }
  return {
    keys: out.keys,
    values: out.values,
    dtype: info.dtype,
    tokens: info.tokens,
    tokenStart: info.tokenStart,
    info,
  };
}

/**
 * Reads a record's header (structure and header CRC checked; sections are not inflated).
 * @throws {KvtcError} ERR_KVTC_RECORD_*.
 */
export function inspectRecord(record: Uint8Array): RecordInfo {
  return toInfo(callNative(() => loadNative().inspect(record)));
}

/** True when a record's header and every section CRC32C are intact (no decoding). */
export function verifyRecord(record: Uint8Array): boolean {
  return loadNative().verify(record);
}
