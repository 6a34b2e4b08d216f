/**
 * The only file that loads the native addon (cuda/, built by cmake-js). It declares every
 * native export with its types; everything else imports the typed wrappers in this folder.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { KvtcError } from '../core/errors.js';

/** Plan as the addon sees it: (start, size, type) triples; type 0 dropped, 1 int2, 2 int4, 3 fp8. */
export interface NativePlan {
  groups: Uint32Array;
  rank: number;
  ratio?: number;
}

export interface NativePlanResult extends NativePlan {
  budgetBits: number;
  bitsPerToken: number;
  expectedError: number;
}

export interface NativeRope {
  theta: number;
  rotaryDim: number;
  layout: 'neox' | 'interleaved';
  scaling: 'default' | 'linear' | 'llama3';
  factor?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
}

export interface NativeStream {
  mean: Float32Array;
  basis: Float32Array;
  rank: number;
}

export interface NativeCalibrationDesc {
  id: Uint8Array;
  modelFingerprint: Uint8Array;
  layers: number;
  kvHeads: number;
  headDim: number;
  rope: NativeRope;
  keys: NativeStream;
  values: NativeStream;
  plans: { keys: NativePlan; values: NativePlan }[];
}

/** A native, immutable copy of a calibration; shared by concurrent jobs. */
export interface NativeCalibration {
  readonly featureDim: number;
  readonly planCount: number;
}

export interface NativeEncodeJob {
  keys: Uint8Array;
  values: Uint8Array;
  dtype: number;
  tokens: number;
  tokenStart: number;
  planId: number;
  sinkTokens: number;
  windowTokens: number;
  deflateLevel: number;
  chunkBytes: number;
  /** 0 or absent: libdeflate chunks (CPU); else indexed chunks with this entry stride */
  entryStride?: number;
  backend?: 'cpu' | 'cuda';
  /** the projection's operand precision: CPU fp32 (default), bf16 or fp8 (simulated); CUDA bf16 (default) or fp8 */
  projection?: Projection;
}

/** Precision of the projection GEMM's operands (see EncodeOptions.projection). */
export type Projection = 'fp32' | 'bf16' | 'fp8';

export interface NativeSection {
  kind: number;
  encoding: number;
  tokenOffset: number;
  tokens: number;
  offset: number;
  storedBytes: number;
}

export interface NativeHeader {
  formatVersion: number;
  calibrationId: Buffer;
  modelFingerprint: Buffer;
  tokenStart: number;
  tokens: number;
  featureDim: number;
  planId: number;
  dtype: number;
  sinkTokens: number;
  windowTokens: number;
  recordBytes: number;
  sections: NativeSection[];
}

/** Layout of one layer of a paged cache: element strides of [kv, block, slot, head, dim]. */
export interface NativePagedGeometry {
  layers: number;
  numBlocks: number;
  blockSize: number;
  kvHeads: number;
  headDim: number;
  dtype: number;
  strides: [number, number, number, number, number];
}

export interface NativeKvRegistration {
  device: number;
  geometry: NativePagedGeometry;
  /** 64-byte cudaIpcMemHandle_t of each allocation. */
  allocations: Uint8Array[];
  layerAllocation: number[];
  layerOffset: number[];
  /** 64-byte cudaIpcEventHandle_t the client records when its blocks are ready to read. */
  clientEvent?: Uint8Array;
}

/** A registered region: its id and the sidecar's IPC event (recorded after each load). */
export interface NativeRegion {
  region: number;
  event: Buffer;
}

export interface NativePagedSpan {
  blockIds: Uint32Array | number[];
  firstSlot: number;
  tokens: number;
  /** Decode only: leading record tokens not written (the record holds recordOffset + tokens). */
  recordOffset?: number;
  /** Decode only: tokens the record holds (default recordOffset + tokens). */
  recordTokens?: number;
}

export interface NativeAddon {
  Calibration: new (desc: NativeCalibrationDesc) => NativeCalibration;
  encode(calibration: NativeCalibration, job: NativeEncodeJob): Promise<Buffer>;
  decode(
    calibration: NativeCalibration,
    record: Uint8Array,
    expectedBytes: number,
    backend?: 'cpu' | 'cuda',
    projection?: Projection,
  ): Promise<{ header: NativeHeader; keys: Buffer; values: Buffer }>;
  inspect(record: Uint8Array): NativeHeader;
  verify(record: Uint8Array): boolean;
  fitPca(
    samples: Float32Array,
    n: number,
    p: number,
    rank: number,
    options: { powerIters: number; oversample: number; seed: number },
    progress?: (fraction: number) => void,
  ): Promise<{ mean: Float32Array; basis: Float32Array; singular: Float32Array; totalEnergy: number; rank: number }>;
  allocateBits(
    projected: Float32Array,
    n: number,
    f: number,
    budgets: number[],
    progress?: (fraction: number) => void,
  ): Promise<{ plans: NativePlanResult[]; energy: number }>;
  benchGemm(options: { m: number; n: number; k: number; transB: boolean; reps: number }): number;
  /** Job counts; fusedRestores: streams restored through the fused GEMM (KVTC_FUSED_RESTORE=on). */
  counters(): { queued: number; running: number; done: number; failed: number; fusedRestores: number };
  /** fusedRestore: whether this CUDA build has the fused restore (built with CUTLASS). */
  buildInfo(): {
    formatVersion: number;
    cuda: boolean;
    cudaDevice?: string | null;
    fusedRestore: boolean;
    blas: string;
  };
  /** CUDA builds only: device-resident bf16 KV, median seconds per batch and same-run baselines. */
  benchCuda?(
    calibration: NativeCalibration,
    o: {
      keys: Uint16Array;
      values: Uint16Array;
      tokens: number;
      batch: number;
      planId: number;
      reps: number;
      paged?: boolean;
      chunkBytes: number;
      projection?: Projection;
      /** newest tokens of each sequence kept raw (EncodeJob.window_tokens) */
      windowTokens: number;
      /** 0: chunks stored without entropy coding; otherwise the CUDA coder (default 6) */
      deflateLevel?: number;
    },
  ): {
    encodeS: number;
    decodeS: number;
    /** the pipeline's own GEMMs (fp8 ones with projection 'fp8') */
    gemmEncodeS: number;
    gemmDecodeS: number;
    gemmBf16EncodeS: number;
    gemmBf16DecodeS: number;
    d2hCopyS: number;
    recordBytes: number;
    codedBytes: number;
    codedTokens: number;
    poolHits: number;
    poolMisses: number;
    device: string;
  };
  /** CUDA builds only: the GPU data plane over paged KV caches (cuda/include/kvtc/cuda_paged.h). */
  cudaRegisterKv?(registration: NativeKvRegistration): NativeRegion;
  cudaAllocateKv?(device: number, geometry: NativePagedGeometry): NativeRegion;
  cudaWriteKv?(region: number, bytes: Uint8Array): void;
  cudaReadKv?(region: number): Buffer;
  cudaReleaseKv?(region: number): boolean;
  encodePagedMany?(
    calibration: NativeCalibration,
    region: number,
    jobs: Omit<NativeEncodeJob, 'keys' | 'values' | 'dtype' | 'backend'>[],
    spans: NativePagedSpan[],
  ): Promise<Buffer[]>;
  decodePagedMany?(
    calibration: NativeCalibration,
    region: number,
    records: Uint8Array[],
    spans: NativePagedSpan[],
    projection?: Projection,
  ): Promise<NativeHeader[]>;
  cudaDevices?(): { index: number; name: string; uuid: string }[];
  stages: {
    ropeRotate(
      x: Float32Array,
      o: { tokens: number; heads: number; headDim: number; positionStart: number; rope: NativeRope; inverse: boolean },
    ): Float32Array;
    project(
      x: Float32Array,
      o: { mean: Float32Array; basis: Float32Array; basisRank: number; tokens: number; rank: number; inverse: boolean },
    ): Float32Array;
    quantize(d: Float32Array, o: { tokens: number; plan: NativePlan }): Buffer;
    dequantize(payload: Uint8Array, o: { tokens: number; plan: NativePlan }): Float32Array;
    packBits(codes: Uint8Array, bits: number, unpackCount?: number): Buffer;
    deflate(
      data: Uint8Array,
      o:
        | { inflate: false; chunkBytes: number; level: number; entryStride?: number }
        | { inflate: true; expectedBytes: number; indexed?: boolean },
    ): Buffer;
    crc32c(data: Uint8Array): number;
    /** `into`: write the copy there (and return it as `copy`) instead of a new Buffer. */
    copyCrc32c(data: Uint8Array, into?: Buffer): { copy: Buffer; crc: number };
    /** Copies (or, inPlace, only checksums) every part: host_copy.h CopyCrcMany. */
    copyCrc32cMany(parts: Uint8Array[], inPlace?: boolean): { copies: Buffer[]; crcs: number[] };
    /** Each round takes a block per size, notes them as one encode's batch, frees them. */
    recordPoolRun(
      sizes: number[],
      rounds: number,
    ): { hits: number; misses: number; idleBytes: number; limitBytes: number };
    copyChunks(
      data: Uint8Array,
      o: { srcOffsets: number[]; dstOffsets: number[]; sizes: number[]; dstBytes: number },
    ): Buffer;
    copyChunksCrc32c(
      data: Uint8Array,
      o: { srcOffsets: number[]; dstOffsets: number[]; sizes: number[]; dstBytes: number },
    ): { copy: Buffer; crc: number };
    /** copyChunksCrc32c of every list in one parallel pass: host_copy.h ParallelCopyChunksCrcMany. */
    copyChunksCrc32cMany(
      data: Uint8Array,
      lists: { srcOffsets: number[]; dstOffsets: number[]; sizes: number[]; dstBytes: number }[],
    ): { copy: Buffer; crc: number }[];
    round(x: Float32Array, to: 'float16' | 'bfloat16' | 'fp8'): Float32Array;
    quantizeCuda?(d: Float32Array, o: { tokens: number; plan: NativePlan }): Buffer;
    dequantizeCuda?(payload: Uint8Array, o: { tokens: number; plan: NativePlan }): Float32Array;
    /** Whether `data` lies in page-locked memory (a record written under KVTC_PIN_RECORDS=1). */
    pageLockedCuda?(data: Uint8Array): boolean;
  };
}

const here = dirname(fileURLToPath(import.meta.url));

function candidates(): string[] {
  // From src/codec (ts-node, tests) or dist/src/codec (built): the repository root is 2 or 3 up.
  const roots = [resolve(here, '..', '..'), resolve(here, '..', '..', '..')];
  const fromEnv = process.env['KVTC_ADDON_PATH'];
  return [...(fromEnv ? [fromEnv] : []), ...roots.map((r) => join(r, 'cuda', 'build', 'Release', 'kvtc.node'))];
}

let cached: NativeAddon | undefined;

/**
 * Loads the addon once.
 * @throws {KvtcError} ERR_KVTC_NATIVE_LOAD with the paths tried and how to build it.
 */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const path of candidates()) {
    if (!existsSync(path)) {
      tried.push(`${path}: not found`);
      continue;
    }
    try {
      cached = require(path) as NativeAddon;
      return cached;
    } catch (err) {
      tried.push(`${path}: ${(err as Error).message}`);
    }
  }
  throw new KvtcError(
    'ERR_KVTC_NATIVE_LOAD',
    [
      'Could not load the kvtc native addon.',
      ...tried.map((t) => `  tried ${t}`),
      'Possible solutions:',
      '  - build it: npm run build:native (needs cmake, g++, libopenblas-dev, libdeflate-dev)',
      '  - point KVTC_ADDON_PATH at a built kvtc.node',
    ].join('\n'),
  );
}
