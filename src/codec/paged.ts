/**
 * The GPU data plane in TypeScript: regions over a client's paged KV cache (opened by CUDA IPC)
 * and the encode/decode of a sequence's blocks in place. CUDA builds only; every entry point
 * throws ERR_KVTC_BACKEND_UNAVAILABLE elsewhere.
 */
import type { Calibration } from './calibration.js';
import { DTYPE_CODE, ENCODE_DEFAULTS, toInfo, type KvDtype, type RecordInfo } from './codec.js';
import { KvtcError, awaitNative, callNative } from '../core/errors.js';
import { loadNative, type NativeAddon, type NativePagedSpan } from './native.js';

/** Element strides of the logical [kv, block, slot, head, dim] index of one layer's tensor. */
export interface PagedLayout {
  numBlocks: number;
  blockSize: number;
  kvHeads: number;
  headDim: number;
  dtype: KvDtype;
  strides: [number, number, number, number, number];
}

export interface KvRegistration {
  device: number;
  layout: PagedLayout;
  layers: number;
  allocations: Uint8Array[];
  layerAllocation: number[];
  layerOffset: number[];
  clientEvent?: Uint8Array;
}

/** A sequence's tokens: token t is slot (firstSlot + t) % blockSize of blockIds[(firstSlot + t) / blockSize]. */
export type PagedSpan = NativePagedSpan;

export interface Region {
  id: number;
  /** The sidecar's IPC event handle (64 bytes): recorded after every load into this region. */
  event: Buffer;
}

type Paged = Required<
  Pick<
    NativeAddon,
    | 'cudaRegisterKv'
    | 'cudaAllocateKv'
    | 'cudaWriteKv'
    | 'cudaReadKv'
    | 'cudaReleaseKv'
    | 'encodePagedMany'
    | 'decodePagedMany'
    | 'cudaDevices'
  >
>;

function paged(): Paged {
  const n = loadNative();
  if (!n.cudaRegisterKv || !n.buildInfo().cudaDevice) {
    throw new KvtcError(
      'ERR_KVTC_BACKEND_UNAVAILABLE',
      n.cudaRegisterKv
        ? 'the GPU data plane needs a CUDA device; none is usable here'
        : 'the GPU data plane needs the CUDA build of the addon (KVTC_WITH_CUDA=ON)',
    );
  }
  return n as unknown as Paged;
}

/** True when this process can open CUDA IPC regions (CUDA build with a device). */
export function pagedAvailable(): boolean {
  try {
    paged();
    return true;
  } catch {
    return false;
  }
}

function geometry(layers: number, l: PagedLayout) {
  return {
    layers,
    numBlocks: l.numBlocks,
    blockSize: l.blockSize,
    kvHeads: l.kvHeads,
    headDim: l.headDim,
    dtype: DTYPE_CODE[l.dtype],
    strides: l.strides,
  };
}

/** Opens a client's cache by IPC. @throws ERR_KVTC_IPC, ERR_KVTC_INVALID_ARGUMENT. */
export function registerKv(r: KvRegistration): Region {
  const n = paged();
  const out = callNative(() =>
    n.cudaRegisterKv({
      device: r.device,
      geometry: geometry(r.layers, r.layout),
      allocations: r.allocations,
      layerAllocation: r.layerAllocation,
      layerOffset: r.layerOffset,
      ...(r.clientEvent ? { clientEvent: r.clientEvent } : {}),
    }),
  );
  return { id: out.region, event: out.event };
}

/** A region over memory this process allocates on `device` (tests and benchmarks). */
export function allocateKv(device: number, layers: number, layout: PagedLayout): Region {
  const n = paged();
  const out = callNative(() => n.cudaAllocateKv(device, geometry(layers, layout)));
  return { id: out.region, event: out.event };
}

export function writeKv(region: Region, bytes: Uint8Array): void {
  callNative(() => paged().cudaWriteKv(region.id, bytes));
}

export function readKv(region: Region): Buffer {
  return callNative(() => paged().cudaReadKv(region.id));
}

/** Releases the region; IPC mappings close once no job uses them. */
export function releaseKv(region: Region): boolean {
  return callNative(() => paged().cudaReleaseKv(region.id));
}

export function cudaDevices(): { index: number; name: string; uuid: string }[] {
  return pagedAvailable() ? paged().cudaDevices() : [];
}

/** The CUDA backend's GEMM precision (EncodeOptions.projection): bf16 (default) or fp8. */
export type GpuProjection = 'bf16' | 'fp8';

export interface PagedEncodeOptions {
  planId: number;
  projection?: GpuProjection;
  tokenStart: number;
  sinkTokens?: number;
  windowTokens?: number;
  /** 0: chunks stored without entropy coding (EncodeOptions.deflateLevel); default 6 */
  deflateLevel?: number;
}

function nativeJob(span: PagedSpan, o: PagedEncodeOptions) {
  return {
    tokens: span.tokens,
    tokenStart: o.tokenStart,
    planId: o.planId,
    sinkTokens: o.sinkTokens ?? ENCODE_DEFAULTS.sinkTokens,
    windowTokens: o.windowTokens ?? ENCODE_DEFAULTS.windowTokens,
    deflateLevel: o.deflateLevel ?? ENCODE_DEFAULTS.deflateLevel,
    chunkBytes: ENCODE_DEFAULTS.cudaChunkBytes,
    ...(o.projection ? { projection: o.projection } : {}),
  };
}

export async function encodePaged(
  calibration: Calibration,
  region: Region,
  span: PagedSpan,
  o: PagedEncodeOptions,
): Promise<Buffer> {
  return (await encodePagedMany(calibration, region, [span], [o]))[0]!;
}

/**
 * A record per span of one region (`options[i]` for `spans[i]`), in one native job: sequences of
 * few tokens go through the GPU together (one projection GEMM and one coder launch per group of
 * up to 2K coded tokens), which is what makes 256-token chunks fast. One failure fails them all.
 */
export async function encodePagedMany(
  calibration: Calibration,
  region: Region,
  spans: PagedSpan[],
  options: PagedEncodeOptions[],
): Promise<Buffer[]> {
  if (spans.length !== options.length)
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${spans.length} spans but ${options.length} option sets`);
  const n = paged();
  return awaitNative(() =>
    n.encodePagedMany(
      calibration.native,
      region.id,
      spans.map((span, i) => nativeJob(span, options[i]!)),
      spans,
    ),
  );
}

/** Decodes `record` into the span's blocks; the region's event is recorded when they are written. */
export async function decodePaged(
  calibration: Calibration,
  region: Region,
  span: PagedSpan,
  record: Uint8Array,
  projection?: GpuProjection,
): Promise<RecordInfo> {
  return (await decodePagedMany(calibration, region, [span], [record], projection))[0]!;
}

/**
 * `records[i]` into `spans[i]`'s blocks, in one native job: records of few tokens go through the
 * GPU together (one inflate launch, one GEMM and one write per stream for up to 2K coded tokens).
 * The region's event is recorded when every block is written. One failure fails them all (the
 * blocks of records decoded before the bad one may be written).
 */
export async function decodePagedMany(
  calibration: Calibration,
  region: Region,
  spans: PagedSpan[],
  records: Uint8Array[],
  projection?: GpuProjection,
): Promise<RecordInfo[]> {
  if (spans.length !== records.length)
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${spans.length} spans but ${records.length} records`);
  const n = paged();
  const headers = await awaitNative(() => n.decodePagedMany(calibration.native, region.id, records, spans, projection));
  return headers.map(toInfo);
}
